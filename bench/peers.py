"""The peers the benchmark measures us against in the same run, over the same warm emulator:
freqtrade's `download-data` (its Binance archive route) in an environment of its own that the
benchmark creates (freqtrade is no dependency of ours), and ccxt's `since` loop (children.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

FREQTRADE = "2026.9"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marketdata-bench"

# freqtrade fetches archive files from a URL it builds with data.binance.vision written in: this
# wrapper rewrites that one function's answer to the emulator, then runs freqtrade's own CLI.
_WRAPPER = '''import sys
from freqtrade.exchange import binance_public_data as archive

_zip_url = archive.binance_vision_ohlcv_zip_url
archive.binance_vision_ohlcv_zip_url = lambda *a, **k: _zip_url(*a, **k).replace(
    "https://data.binance.vision", sys.argv[1])
from freqtrade.main import main

main(sys.argv[2:])
'''


def freqtrade_python() -> Path:
    """The interpreter of a virtual environment holding freqtrade FREQTRADE, created once and kept
    in the user's cache (about 400 MB; the first `make bench` spends a minute installing it)."""
    env = CACHE / f"freqtrade-{FREQTRADE}"
    python = env / "bin" / "python"
    marker = env / ".installed"
    if not marker.exists():
        shutil.rmtree(env, ignore_errors=True)
        subprocess.run(["uv", "venv", "-q", "--python", "3.11", str(env)], check=True)
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(python), f"freqtrade=={FREQTRADE}"], check=True)
        marker.touch()
    return python


def freqtrade_download(run_dir: Path, url: str, first: str, end: str, python: Path) -> list[str]:
    """The command line of `freqtrade download-data` for BTC/USDT 1m over [first, end) (YYYYMMDD)
    into a fresh user directory, with ccxt's and the archive's URLs pointed at the emulator;
    the data lands in run_dir/user/data/binance/BTC_USDT-1m.feather."""
    (run_dir / "user").mkdir(parents=True)
    (run_dir / "ftrun.py").write_text(_WRAPPER)
    ccxt = {"urls": {"api": {"public": url + "/api/v3"}}, "options": {"fetchMarkets": {"types": ["spot"]}}}
    config = {
        "exchange": {"name": "binance", "pair_whitelist": ["BTC/USDT"], "ccxt_config": ccxt, "ccxt_async_config": ccxt},
        "stake_currency": "USDT", "trading_mode": "spot", "dataformat_ohlcv": "feather",
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    return [str(python), str(run_dir / "ftrun.py"), url, "download-data", "-c", str(run_dir / "config.json"),
            "--userdir", str(run_dir / "user"), "--timerange", f"{first}-{end}", "-t", "1m"]


def freqtrade_rows(run_dir: Path) -> int:
    import polars as pl

    return pl.read_ipc(run_dir / "user" / "data" / "binance" / "BTC_USDT-1m.feather").height
