"""Do concurrent LanceDB writers on S3 lose commits? Several processes upsert disjoint keys into one table at once.

    python benchmarks/s3_concurrent_writes.py [--writers 3] [--rounds 10] [--rows 10] [--json]

Against moto's S3 server on loopback (pip install 'ravlm[test]'). This is what `embed_shard` tasks on
different Ray workers do to one vector table when the store is on object storage; the store's write lock holds
only within one process there. Prints the rows found against the rows written, and the table's version (one per
commit plus the creation).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

import pyarrow as pa

URI = "s3://ravlm-bench/lancedb"


def writer(first: int, rows: int, rounds: int) -> None:
    from ravlm_core.store import Store

    store = Store(URI)
    for round_ in range(rounds):
        ids = [f"k{first + round_ * rows + i}" for i in range(rows)]
        store.upsert("t", pa.table({"id": ids, "value": list(range(rows))}), "id")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ALLOW_HTTP="true", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    try:
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True
                          ).create_dir("ravlm-bench")
        from ravlm_core.store import Store

        Store(URI).db.create_table("t", schema=pa.schema([("id", pa.string()), ("value", pa.int64())]))
        context = multiprocessing.get_context("spawn")  # separate processes, as Ray workers are
        start = time.perf_counter()
        processes = [context.Process(target=writer, args=(w * 1_000_000, args.rows, args.rounds))
                     for w in range(args.writers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        table = Store(URI).table("t")
        result = {"writers": args.writers, "commits_each": args.rounds, "rows_written": args.writers * args.rounds
                  * args.rows, "rows_found": table.count_rows(), "version": table.version,
                  "failed_writers": sum(p.exitcode != 0 for p in processes),
                  "seconds": round(time.perf_counter() - start, 1)}
    finally:
        server.stop()
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
