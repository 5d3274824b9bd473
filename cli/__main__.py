"""`python -m cli`: the same program as the `meshllm` console script."""
from cli.app import main

main()
