"""`torchrun --nproc_per_node N -m deploy_nas.search --latency-budget-ms B --out DIR ...`: `deploy-nas search` with
each population scored across the N ranks (rank 0 measures latency and writes the outputs)."""
import sys

from deploy_nas.cli import main

if __name__ == "__main__":
    main(["search", *sys.argv[1:]], prog_name="python -m deploy_nas.search")
