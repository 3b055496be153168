"""`torchrun --nproc_per_node N -m deploy_nas.search --latency-budget-ms B --out DIR ...`: `deploy-nas search` with
each population scored across the N ranks (rank 0 measures latency and writes the outputs)."""
from deploy_nas.cli import search_cmd
from deploy_nas.cli_options import main_one_line

if __name__ == "__main__":
    main_one_line(search_cmd, prog_name="python -m deploy_nas.search")
