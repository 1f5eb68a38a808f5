"""What the photo cache's key costs at every start: `photos._cache_stem` over a folder, with each file's content
sample (its first, middle and last 4 KB, `photos._content_sample`) and without it, best of `--repeats`, the page
cache warm (the second read of a folder, as at every run after the first).

    python benchmarks/cache_key.py ../shared/data/train [--size 224] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

from colorgan import photos


def best_ms(files, size: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        photos._cache_stem(files, size)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = photos.find_photos(args.folder)
    photos._cache_stem(files, args.size)  # warm the page cache
    sampled = best_ms(files, args.size, args.repeats)
    with mock.patch.object(photos, "_content_sample", lambda path, size: b""):
        plain = best_ms(files, args.size, args.repeats)
    print(f"| photos | key with content samples (ms) | without (ms) |\n|---:|---:|---:|\n"
          f"| {len(files)} | {sampled:.0f} | {plain:.0f} |")


if __name__ == "__main__":
    main()
