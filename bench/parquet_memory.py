"""What a loaded parquet dataset keeps in memory, and what reading its images back costs.

Writes a parquet of random PNG images (incompressible, so the file is as large as its images), loads it with
`load_dataset` (validation included) under tracemalloc, and reports the Python objects still alive after the
load (the samples), the load time, and the time to read images back in file order and in random order.

    python bench/parquet_memory.py [--rows 2000] [--size 180] [--row-group 200] [--json]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from observe_r1.data import sources
from observe_r1.data.dataset import load_dataset


def write_parquet(path: Path, rows: int, size: int, row_group: int) -> None:
    rng = random.Random(0)
    with pq.ParquetWriter(path, pa.schema([("problem", pa.string()), ("answer", pa.string()),
                                           ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])) as w:  # fmt: skip
        for start in range(0, rows, row_group):
            batch = []
            for i in range(start, min(rows, start + row_group)):
                buffer = io.BytesIO()
                Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(
                    buffer, format="PNG"
                )
                batch.append(
                    {
                        "problem": f"<image>q{i}",
                        "answer": str(i),
                        "image": {"bytes": buffer.getvalue(), "path": None},
                    }
                )
            w.write_table(pa.Table.from_pylist(batch, schema=w.schema))


def measure(path: Path, reads: int = 200) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    result = load_dataset(path)
    load_s = time.perf_counter() - started
    if hasattr(sources, "_group_column"):  # (absent before images were references: run on older commits too)
        sources._group_column.cache_clear()  # the samples alone, not the two row groups cached for reading
    gc.collect()
    alive, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    samples = result.samples
    order = list(range(len(samples)))
    random.Random(0).shuffle(order)
    timings = {}
    for name, indices in (("file_order", range(min(reads, len(samples)))), ("random_order", order[:reads])):
        started = time.perf_counter()
        for i in indices:
            samples[i].load_images()
        timings[f"load_ms_{name}"] = 1000 * (time.perf_counter() - started) / len(indices)
    return {"file_mib": path.stat().st_size / 2**20, "rows": len(samples), "load_s": load_s,
            "alive_mib_after_load": alive / 2**20, **timings}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--size", type=int, default=180, help="image side in pixels")
    parser.add_argument("--row-group", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.parquet"
        write_parquet(path, args.rows, args.size, args.row_group)
        out = measure(path)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['file_mib']:.0f} MiB parquet, {out['rows']} rows: load {out['load_s']:.1f} s, "
          f"{out['alive_mib_after_load']:.1f} MiB of Python objects alive after the load; loading an image back "
          f"{out['load_ms_file_order']:.3f} ms in file order, {out['load_ms_random_order']:.1f} ms in random order")  # fmt: skip


if __name__ == "__main__":
    main()
