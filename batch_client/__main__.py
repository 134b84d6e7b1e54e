"""python -m batch_client --workflow WORKFLOW_API.json --prompts PROMPTS.(txt|csv|jsonl) --server URL [--server URL ...]

Runs every prompt through the workflow (API format, as saved by ComfyUI's 'Export (API)'), spreading the queue
over the servers; saves each image with its prompt, negative and seed in the PNG metadata; prints a summary.
Exit status 0 when every prompt produced its images, 1 otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from .jobs import find_nodes, read_prompts
from .runner import Batch, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", required=True, help="API-format workflow JSON")
    parser.add_argument("--prompts", required=True, help=".txt (one per line), .csv ('prompt' column) or .jsonl")
    parser.add_argument("--server", action="append", required=True, help="ComfyUI URL, e.g. http://127.0.0.1:8188; repeat")
    parser.add_argument("--out", default="batch_output", help="folder for the images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt without its own seed (+1 per prompt)")
    parser.add_argument("--retries", type=int, default=2, help="servers a prompt may be retried on after one drops")
    parser.add_argument("--prompt-node", help="id of the positive text node (default: found from the sampler)")
    parser.add_argument("--negative-node", help="id of the negative text node")
    parser.add_argument("--seed-node", help="id of the sampler node")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stdout)

    with open(args.workflow, encoding="utf-8") as fh:
        workflow = json.load(fh)
    if "nodes" in workflow and "links" in workflow:
        parser.error(f"{args.workflow} is a UI-format workflow; export it with 'Export (API)' in ComfyUI.")
    if args.prompt_node and args.seed_node:
        nodes = (args.prompt_node, args.negative_node, args.seed_node)
    else:
        nodes = find_nodes(workflow)
    jobs = read_prompts(args.prompts, args.seed)
    started = time.time()
    results = asyncio.run(Batch(workflow, nodes, args.out, retries=args.retries).run(jobs, args.server))
    print(summary(results, time.time() - started))
    return 0 if all(r.error is None and r.files for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
