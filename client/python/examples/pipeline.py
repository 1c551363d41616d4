#!/usr/bin/python3
"""What an MLOps pipeline step looks like: upload the experts a training job
produced, merge them with TIES, and fetch the merged model. With
--evaluate, each expert is registered with its name as its task (a folder's
program.pt travels with it) and the merge is evaluated on the tasks' eval
datasets registered on the server.

  pipeline.py --server localhost:50051 --base ./base --expert math=./math \
              --expert code=./code --out ./merged [--evaluate]
"""
import argparse
import sys

from mergeserve_client import Client, MergeError


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=None)
    ap.add_argument("--base", required=True, help="local base model folder")
    ap.add_argument("--expert", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--evaluate", action="store_true",
                    help="evaluate the merge on the experts' tasks")
    args = ap.parse_args()

    with Client(args.server) as c:
        existing = {ck.name for ck in c.checkpoints()}
        if "pipeline-base" not in existing:
            c.register("pipeline-base", args.base, role="base", upload=True)
        experts = []
        for spec in args.expert:
            name, path = spec.split("=", 1)
            if name not in existing:
                c.register(name, path, base="pipeline-base", upload=True,
                           task=name if args.evaluate else "")
            experts.append(name)
        config = {"merge_method": "ties", "base_model": "pipeline-base",
                  "models": [{"model": e, "parameters": {"density": args.density}}
                             for e in experts]}

        def progress(job):
            print(f"\r{job.id}: {job.tensors_done}/{job.tensors_total} tensors",
                  end="", file=sys.stderr)

        try:
            job = c.merge(config, on_progress=progress)
        except MergeError as e:
            print(f"\nmerge failed: {e}", file=sys.stderr)
            return 1
        print(file=sys.stderr)
        c.download(job.id, args.out)
        print(f"merged {', '.join(experts)} -> {args.out} ({job.result_bytes} bytes, "
              f"{job.seconds:.2f} s on the server)")
        if args.evaluate:
            for event in c.evaluate(job_id=job.id):
                if event.HasField("task"):
                    t = event.task
                    print(f"  {t.task}: accuracy {t.accuracy:.4f}, "
                          f"cross-entropy {t.mean_cross_entropy:.4f} on {t.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
