"`python -m colorgan ...` is the `colorgan` command (handy under `torchrun -m colorgan`)."
from .cli import main

main()
