"""`python -m marketdata_assets.cli`: the `marketdata` command."""

from marketdata_assets.cli import main

main()
