"""bench/RESULTS.md, written from what bench.py measured."""

from __future__ import annotations

from importlib.metadata import version

from peers import FREQTRADE
from workload import LATENCY_MS, BTC_1M, LOAD_MONTHS, LOAD_SYMBOLS, REPORT_CHECKED, REPORT_START, SIX_YEARS


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds / 1e6:.2f} M rows/s"


def against_freqtrade(ours: dict, ft: dict) -> list[str]:
    runs = lambda r: ", ".join(f"{x:.1f}" for x in r["runs"])  # noqa: E731
    return [
        f"Against freqtrade {FREQTRADE} `download-data` of the same six years (`--timerange "
        f"{SIX_YEARS[0].replace('-', '')}-20250101 -t 1m`: Binance's daily archive files, no checksum, into a",
        "feather file; its own environment, its archive and ccxt URLs pointed at the same emulator), each",
        "of its runs right after one of ours:",
        "",
        "| client | rows | wall (median) | runs | peak RSS |",
        "|---|---|---|---|---|",
        f"| marketdata (above) | {ours['rows']:,} | {ours['seconds']:.1f} s | {runs(ours)} s | {ours['rss_mb']:.0f} MB |",
        f"| freqtrade {FREQTRADE} | {ft['rows']:,} | {ft['seconds']:.1f} s | {runs(ft)} s | {ft['rss_mb']:.0f} MB |",
        "",
        f"Our time is **{ours['seconds'] / ft['seconds']:.2f} of freqtrade's** (goal: at most 0.5), our peak RSS "
        f"{ours['rss_mb'] / ft['rss_mb']:.2f} of its. freqtrade keeps no checksum, no Dagster record and no check;",
        "it stores open, high, low, close and volume, we all twelve columns.",
        "",
    ]


def with_latency(ours: dict, ccxt: dict) -> list[str]:
    meta = ours["metadata"]
    return [
        f"## (e) Against ccxt where the network is slow: {LATENCY_MS} ms a request",
        "",
        f"As (c), with the emulator waiting {LATENCY_MS} ms before every klines answer (Binance's real",
        "limits). ccxt's loop waits for each page before asking the next; we keep up to",
        "`MARKETDATA_BINANCE_MAX_CONCURRENCY` (10) pages in flight within the weight budget.",
        "",
        "| client | rows | wall | requests | 429s | ratio |",
        "|---|---|---|---|---|---|",
        f"| marketdata (`dagster asset materialize`, source rest) | {ours['rows']:,} | {ours['seconds']:.1f} s | "
        f"{meta['requests']} | {meta['http_429']} | 1 |",
        f"| ccxt {version('ccxt')} since-loop | {ccxt['rows']:,} | {ccxt['seconds']:.1f} s | "
        f"{-(-ccxt['rows'] // 1000)} | | {ccxt['seconds'] / ours['seconds']:.1f}× our time |",
        "",
        f"We take **{ours['seconds'] / ccxt['seconds']:.2f} of ccxt's time** (goal: at most 1/3), of which "
        f"{ours['ingest_seconds']:.1f} s is the data path; the weight used, {meta['weight_used']:,},",
        "is within one minute's budget of 6,000.",
        "",
    ]


def report(results: dict) -> str:
    m = results["machine"]
    t, a_arch, a_rest = results["target"], results["a_archive"], results["a_rest"]
    dp, fetch, wh = results["data_path"], results["fetch_only"], results["warehouse"]
    ours_limited, ccxt = results["c_ours"], results["c_ccxt"]
    rp = results["report"]
    d_daily, d_monthly, d_per = results["d_daily_range"], results["a_archive"], results["d_per_partition"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (bench/bench.py). Every run is a real process against the emulators",
        "over loopback (`marketdata emulator` in its own process, Binance's real limits unless said",
        "otherwise); Dagster runs use a fresh default instance (SQLite) and a fresh DuckDB file.",
        "Peak RSS is the measured process's own (wait4), the emulator not included.",
        "",
        f"- date: {m['date']}; commit: {m['commit']}",
        f"- machine: {m['cpu']}, {m['memory']}; {m['os']}; Python {m['python']}",
        f"- {m['versions']}",
        "",
        *(targets(results) if "scale" in results else []),
        "## Target: six years of 1m spot klines from the archive through Dagster",
        "",
        f"`dagster asset materialize -m marketdata_assets.definitions --select {BTC_1M} "
        f"--partition-range {SIX_YEARS[0]}...{SIX_YEARS[1]}` ({t['partitions']} monthly partitions), default",
        "embedded instance and warehouse, process start-up, Dagster bookkeeping and the asset's three",
        "checks, each evaluated and recorded on every partition, included. Run "
        f"{len(t['runs'])} times, each from scratch; the median run:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows written | {t['rows']:,} |",
        f"| wall time, whole command | **{t['seconds']:.1f} s** (runs: {', '.join(f'{x:.1f}' for x in t['runs'])} s) |",
        f"| of which the asset's data path (download, verify, parse, write) | {t['ingest_seconds']:.1f} s ({rate(t['rows'], t['ingest_seconds'])}) |",
        f"| of which Dagster start-up and bookkeeping | {t['seconds'] - t['ingest_seconds']:.1f} s |",
        f"| of which computing the checks, per partition ({t['metadata']['check_results']} results) | {t['metadata']['bookkeeping_seconds']['checking']:.2f} s |",
        f"| of which Dagster recording the {t['partitions']} partitions' materializations | {t['metadata']['bookkeeping_seconds']['recording_partitions']:.2f} s |",
        f"| of which Dagster recording the {t['metadata']['check_results']} check results, one per check and partition | {t['metadata']['bookkeeping_seconds']['recording_check_results']:.2f} s |",
        f"| of which drawing the asset's coverage picture | {t['metadata']['bookkeeping_seconds']['coverage_picture']:.2f} s |",
        f"| archive downloaded | {t['metadata']['archive_megabytes']:.0f} MB in {t['metadata']['archive_files']} files |",
        f"| peak RSS | {t['rss_mb']:.0f} MB |",
        "",
        *against_freqtrade(t, results["freqtrade"]),
        "The data path alone, no Dagster (bench process calling `ingest_klines`, same six years):",
        "",
        "| stage | seconds | throughput | peak RSS |",
        "|---|---|---|---|",
        f"| download + verify + parse (frames dropped) | {fetch['seconds']:.2f} | {rate(fetch['rows'], fetch['seconds'])} | {fetch['rss_mb']:.0f} MB |",
        f"| download + verify + parse + write to DuckDB | {dp['seconds']:.2f} | {rate(dp['rows'], dp['seconds'])} | {dp['rss_mb']:.0f} MB |",
        "",
        "## (a) Pipeline throughput without a rate limit, one symbol-year of 1m spot (2023)",
        "",
        "End to end through `dagster asset materialize` (12 monthly partitions): fetch, parse, write,",
        "Dagster start-up and bookkeeping. REST runs against an emulator with no weight limit.",
        "",
        "| source | rows | wall | rows/s end to end | data path | peak RSS |",
        "|---|---|---|---|---|---|",
        f"| archive | {a_arch['rows']:,} | {a_arch['seconds']:.1f} s | {a_arch['rows'] / a_arch['seconds']:,.0f} | {a_arch['ingest_seconds']:.1f} s | {a_arch['rss_mb']:.0f} MB |",
        f"| REST | {a_rest['rows']:,} | {a_rest['seconds']:.1f} s | {a_rest['rows'] / a_rest['seconds']:,.0f} | {a_rest['ingest_seconds']:.1f} s ({a_rest['metadata']['requests']} requests) | {a_rest['rss_mb']:.0f} MB |",
        "",
    ]
    if "b" in results:
        b = results["b"]
        shares = [row["share"] for row in b["minutes"]]
        lines += [
            "## (b) REST at Binance's spot limit (6,000 weight per minute)",
            "",
            f"Three symbols' whole 1m history over REST in one `dagster asset materialize` run: "
            f"{b['run']['rows']:,} rows, {b['total_weight']:,} weight, {b['run']['seconds']:.0f} s, peak RSS "
            f"{b['run']['rss_mb']:.0f} MB. Counted by the emulator per UTC minute; the first and last "
            "minute are partial and left out.",
            "",
            "| minute (UTC) | weight | share of budget | 429s | 418s |",
            "|---|---|---|---|---|",
            *[f"| {r['minute']} | {r['weight']:,} | {r['share']:.1%} | {r['http_429']} | {r['http_418']} |" for r in b["minutes"]],
            "",
            f"Full minutes: {len(shares)}; lowest share {min(shares):.1%}, mean {sum(shares) / len(shares):.1%}; "
            f"answers by status over the run: {b['answers']}.",
            "",
        ]
    lines += [
        "## (c) Against ccxt, one symbol-year of 1m spot over REST, real limits",
        "",
        "| client | rows | wall | ratio |",
        "|---|---|---|---|",
        f"| marketdata: `dagster asset materialize`, source rest, into DuckDB | {ours_limited['rows']:,} | {ours_limited['seconds']:.1f} s | 1 |",
        f"| ccxt {version('ccxt')} `fetch_ohlcv` since-loop, then a parquet file | {ccxt['rows']:,} | {ccxt['seconds']:.1f} s | {ccxt['seconds'] / ours_limited['seconds']:.1f}× our time |",
        "",
        f"Our time is {ours_limited['seconds'] / ccxt['seconds']:.2f} of ccxt's. ccxt paces itself at its",
        "`rateLimit` (50 ms, one request at a time); we send pages concurrently up to the weight budget.",
        "",
        *with_latency(results["e_ours"], results["e_ccxt"]),
        "## (d) Dagster overhead: one range run against per-partition runs (archive, 2023)",
        "",
        "| runs | partitions | wall | per partition | peak RSS |",
        "|---|---|---|---|---|",
        f"| one range run, daily partitions | {d_daily['partitions']} | {d_daily['seconds']:.1f} s | {d_daily['seconds'] / 365 * 1000:.0f} ms | {d_daily['rss_mb']:.0f} MB |",
        f"| one range run, monthly partitions (ours) | {d_monthly['partitions']} | {d_monthly['seconds']:.1f} s | — | {d_monthly['rss_mb']:.0f} MB |",
        f"| a run per daily partition (mean of {len(d_per['samples'])}, × 365) | 365 | {d_per['mean'] * 365:.0f} s | {d_per['mean']:.2f} s | {d_per['rss_mb']:.0f} MB |",
        "",
        f"Per-partition runs: {', '.join(f'{s:.2f}' for s in d_per['samples'])} s.",
        "",
        "## (f) The warehouse alone: DuckDB upserts of a symbol-year of 1m bars",
        "",
        f"In the ingest's write batches ({wh['batch_rows']:,} rows), one transaction each, one writer.",
        "",
        "| write | rows | seconds | throughput | peak RSS |",
        "|---|---|---|---|---|",
        f"| into an empty table (plain insert) | {wh['rows']:,} | {wh['insert']:.2f} | {rate(wh['rows'], wh['insert'])} | {wh['rss_mb']:.0f} MB |",
        f"| over the same keys (ON CONFLICT update) | {wh['rows']:,} | {wh['upsert_existing']:.2f} | {rate(wh['rows'], wh['upsert_existing'])} | |",
        f"| for comparison: into a copy of the table without the primary key | {wh['rows']:,} | {wh['insert_without_key']:.2f} | {rate(wh['rows'], wh['insert_without_key'])} | |",
        "",
        "## The coverage report: 200 assets, five years of daily partitions",
        "",
        "`marketdata report`'s work (Dagster partition status and check results for every asset, and",
        f"the warehouse's rows, gaps and rejected rows) for {rp['assets']} assets of 1h bars with daily",
        f"partitions from {REPORT_START}: {rp['partitions']:,} partitions, {rp['rows']:,} stored bars, "
        f"{rp['unexplained']} unexplained gaps found. Timed three times in one process "
        "(the instance opened each time):",
        "",
        "| run | seconds |",
        "|---|---|",
        *[f"| {i + 1} | {s:.2f} |" for i, s in enumerate(rp["seconds"])],
        "",
        f"Peak RSS {rp['rss_mb']:.0f} MB. The state was built in {rp['setup_seconds']:.0f} s (see `build_report_state`:",
        f"a real materialization and a result of each check on each asset's first {REPORT_CHECKED} partitions,",
        "then the partition status cache Dagster writes).",
        "",
        "The `marketdata report --format json` process over the same warehouse and instance, start-up",
        "(~1.4 s of imports) included. Its assets have the code's monthly partitions, so the first run",
        "rebuilds their status from the events and caches it, as the UI would; the second reads the cache:",
        f"{rp['command_seconds'][0]:.1f} s, then {rp['command_seconds'][1]:.1f} s.",
        "",
        "## PostgreSQL warehouse: four backfills at once",
        "",
        f"Four `dagster asset materialize` processes started together, one symbol each "
        f"({', '.join(LOAD_SYMBOLS)}), 1m bars {LOAD_MONTHS[0]}…{LOAD_MONTHS[1]} (24 monthly partitions) from the",
        "archive, one default SQLite instance; wall time until the last ends. PostgreSQL 15 on the same",
        "machine (a write batch none of whose keys is stored is COPYed straight into the table, in COPY's binary",
        "format, one transaction per batch).",
        "",
        "| warehouse | rows | distinct keys | wall | rows/s |",
        "|---|---|---|---|---|",
        *[f"| {label} | {r['rows']:,} | {r['distinct']:,} | {r['seconds']:.1f} s | {r['rows'] / r['seconds']:,.0f} |"
          for label, r in (("PostgreSQL", results["load_postgres"]), ("DuckDB (one writer at a time)", results["load_duckdb"]))],
        "",
        "## Derivatives: a year of funding, open interest and long/short",
        "",
        "One `dagster asset materialize` of `binance_perp/{funding,open_interest,long_short}/BTCUSDT` over",
        f"{results['derivatives']['window']} UTC (12 monthly partitions each): funding from the monthly archive",
        "files and REST for the month in progress; open interest and long/short from the daily metrics files",
        "before REST's 30 days and from `/futures/data/*` (paced to 1,000 requests per 5 minutes) after.",
        "Process start-up, Dagster bookkeeping and the six checks included.",
        "",
        "| asset | rows | from the archive | from REST | REST requests |",
        "|---|---|---|---|---|",
        *[f"| {dataset} | {m['rows_written']:,} | {m['rows_from_archive']:,} | {m['rows_from_rest']:,} | {m['requests']} |"
          for dataset, m in results["derivatives"]["datasets"].items()],
        "",
        f"Wall time {results['derivatives']['seconds']:.1f} s, peak RSS {results['derivatives']['rss_mb']:.0f} MB.",
        "",
        *databento(results.get("databento")),
        *venue_years(results.get("venues")),
        *export_year(results.get("export")),
        *stream_latency(results.get("stream")),
        *revisions_cost(results.get("revisions")),
        "## Bootstrap: `marketdata seed` of the default catalog",
        "",
        "`marketdata seed` on a fresh environment (default DuckDB warehouse and SQLite instance): every",
        "dataset of the packaged catalog over the last year (spot and perp klines 1m and 1h of BTCUSDT and",
        "ETHUSDT, funding on three venues, open interest and long/short, and the series: Fear & Greed,",
        "stablecoin supply, BTC's market cap, the SSR and a dozen FRED series), one range run per",
        "PartitionsDefinition in one process, OKX only inside its ~90 days. Then the same command again.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| partitions | {results['seed']['partitions']} in {results['seed']['runs']} runs |",
        *[f"| rows in {table} | {rows:,} |" for table, rows in results["seed"]["rows"].items()],
        f"| wall time, whole command | **{results['seed']['seconds']:.1f} s** |",
        f"| peak RSS | {results['seed']['rss_mb']:.0f} MB |",
        f"| the second run | {results['seed']['again_seconds']:.1f} s: \"{results['seed']['again_said']}\" |",
        "",
        "## Loading the code location: definitions for 10, 100 and 300 symbols",
        "",
        "Every run process and CLI call builds the definitions from the catalog: spot and perp, 1m and",
        "1h klines, and funding, open interest and long/short for the perps. The assets of one dataset,",
        "source and PartitionsDefinition share one definition (one Dagster op).",
        f"Imports (Dagster and ours) {results['load']['imports_seconds']:.2f} s, once; then:",
        "",
        "| symbols | assets | build and resolve |",
        "|---|---|---|",
        *[f"| {c['symbols']} | {c['assets']:,} | {c['seconds']:.2f} s |" for c in results["load"]["catalogs"]],
        "",
        *scaling(results["scale"]),
    ]
    return "\n".join(lines) + "\n"


def venue_rows(found: dict | None) -> list[tuple]:
    """Issue 21's target: each venue at 95% of its limit or more, no 429 and no ban."""
    if not found:
        return []
    bans = found["okx_429"] + found["bybit_403"]
    return [(f"{venue}: a symbol-year of 1m", "≥ 95% of its limit, 0 × 429, 0 bans",
             f"{v['share_of_limit']:.1%}, {v['http_429']} × 429, {found['bybit_403'] if venue == 'bybit' else 0} bans",
             v["share_of_limit"] >= 0.95 and v["http_429"] == 0 and bans == 0,
             f"the CPU, not the budget: {v['data_seconds'] / v['requests'] * 1000:.1f} ms a request of the data path, "
             "each reading a 1,000-bar page (7,000 JSON strings into numbers) and writing its bars, with the emulator "
             "answering on the other of the two cores: at 120 a second a request may take 8.3 ms. No 403 came")
            for venue, v in found["venues"].items()]


def targets(results: dict) -> list[str]:
    """Issue 17's targets against this run's figures, and for each one missed the bottleneck
    measured (the sections below hold the figures; the bottlenecks were found with py-spy and
    memray on this machine, and the `(f)` and data-path rows measure them in every run)."""
    t, ft, fetch, wh = results["target"], results["freqtrade"], results["fetch_only"], results["warehouse"]
    rp, pg = results["report"], results["load_postgres"]
    e_ours, e_ccxt = results["e_ours"], results["e_ccxt"]
    load = results["load"]
    widest = max(load["catalogs"], key=lambda c: c["assets"])
    universes = results["scale"]["universes"]
    largest = universes[-1]
    sizes = [u["symbols"] for u in universes]
    walls = {b: growth([u[b]["seconds"] for u in universes], sizes) for b in ("duckdb", "postgresql")}
    rest_rss = results["a_rest"]["rss_mb"]
    keyed, unkeyed = wh["rows"] / wh["insert"], wh["rows"] / wh["insert_without_key"]
    pg_rate = pg["rows"] / pg["seconds"]
    report_work = sorted(rp["seconds"])[len(rp["seconds"]) // 2]
    definitions = load["imports_seconds"] + widest["seconds"]
    rows = [
        ("six years of 1m against freqtrade", "≤ 0.5 of its time, less memory",
         f"{t['seconds'] / ft['seconds']:.2f} of its time; {t['rss_mb']:.0f} MB against {ft['rss_mb']:.0f} MB",
         t["seconds"] / ft["seconds"] <= 0.5 and t["rss_mb"] < ft["rss_mb"],
         f"time: Dagster's start-up and bookkeeping are {t['seconds'] - t['ingest_seconds']:.1f} s of our "
         f"{t['seconds']:.1f} s; the data path alone takes {t['ingest_seconds'] / ft['seconds']:.2f} of freqtrade's time. "
         "Memory: see the next row; freqtrade peaks about as high, holding its whole frame before writing"),
        ("the archive target, median", "≤ 9 s", f"{t['seconds']:.1f} s", t["seconds"] <= 9.0,
         f"Dagster's start-up and bookkeeping are {t['seconds'] - t['ingest_seconds']:.1f} s of it"),
        ("peak RSS, the six-year target", "≤ 400 MB", f"{t['rss_mb']:.0f} MB", t["rss_mb"] <= 400,
         f"the data path alone, nothing written and no Dagster, peaks at {fetch['rss_mb']:.0f} MB; a one-day run of "
         "the same command peaks at ~414 MB (Dagster, polars, DuckDB and pyarrow loaded): the process's floor is "
         "above the target before a row is read. DuckDB's memory_limit at 250 MB saved ~70 MB, one writer ~130 MB "
         "at 30% more time"),
        ("peak RSS, a symbol-year over REST", "≤ 400 MB", f"{rest_rss:.0f} MB", rest_rss <= 400,
         "the same floor: the process is ~414 MB before its first page"),
        ("DuckDB writes into the keyed table", "≥ 1 M rows/s", f"{keyed / 1e6:.2f} M rows/s", keyed >= 1e6,
         f"the primary key's index: the same rows into the table without it go at {unkeyed / 1e6:.2f} M rows/s; "
         "1 M needs a shorter key or the writer enforcing uniqueness, a design change not taken"),
        ("PostgreSQL, four backfills at once", "≥ 250k rows/s", f"{pg_rate / 1e3:.0f}k rows/s", pg_rate >= 250e3,
         "the server's side of binary COPY into the keyed table (index upkeep and WAL), on the same two cores "
         "as the four Dagster processes feeding it"),
        ("REST with 100 ms a request, against ccxt", "≥ 3× its speed, no 429",
         f"{e_ccxt['seconds'] / e_ours['seconds']:.1f}× its speed, {e_ours['metadata']['http_429']} × 429",
         e_ccxt["seconds"] / e_ours["seconds"] >= 3 and e_ours["metadata"]["http_429"] == 0, ""),
        *venue_rows(results.get("venues")),
        ("the report's work, 200 assets", "≤ 2 s", f"{report_work:.2f} s", report_work <= 2.0, ""),
        ("the `marketdata report` process", "≤ 4 s", f"{rp['command_seconds'][1]:.1f} s",
         rp["command_seconds"][1] <= 4.0,
         f"start-up: the imports alone take {load['imports_seconds']:.1f} s, then the definitions and the instance, "
         "before the work of the row above"),
        (f"definitions for {widest['assets']:,} assets", "≤ 3 s", f"{definitions:.1f} s (imports included)",
         definitions <= 3.0, ""),
        (f"`marketdata report` for {largest['symbols']} symbols", "a time stated",
         f"{largest['duckdb']['report_seconds']:.1f} s (DuckDB), {largest['postgresql']['report_seconds']:.1f} s "
         "(PostgreSQL)", True, ""),
        ("the scaling curve", "linear", f"DuckDB {walls['duckdb'].split(' (')[0]}, PostgreSQL "
         f"{walls['postgresql'].split(' (')[0]}", not any(w.startswith("worse") for w in walls.values()),
         "an asset costs more the larger the universe (seconds an asset: "
         + ", ".join(f"{u['symbols']} symbols {u['duckdb']['seconds'] / (7 * u['symbols']):.2f}" for u in universes)
         + " on DuckDB); the emulator built "
         + ", ".join(f"{u.get('emulator_rebuilt', '?')}" for u in universes)
         + " archive files during the runs (its build time on the same two cores made 300 symbols worse than "
         "linear before its cache held them all)"),
    ]
    return [
        "## Targets (issue 17), measured in this run",
        "",
        "| target | goal | this run | met | where the time or memory goes, when missed |",
        "|---|---|---|---|---|",
        *[f"| {name} | {goal} | {found} | {'yes' if met else '**no**'} | {'' if met else why} |"
          for name, goal, found, met, why in rows],
        "",
    ]


def venue_years(found: dict | None) -> list[str]:
    if not found:
        return []
    rows = [
        f"| {venue} | {v['rows']:,} of {v['expected']:,} | {v['stored'] - v['distinct']} | {v['requests']:,} "
        f"| {v['seconds']:.1f} s ({v['data_seconds']:.1f} s data path) | {v['limit_per_s']:.0f} | "
        f"**{v['share_of_limit']:.1%}** | {v['http_429']} | {v['rss_mb']:.0f} MB | {v['again_new_rows']} in {v['again_seconds']:.1f} s |"
        for venue, v in found["venues"].items()
    ]
    return [
        "## OKX and Bybit: a symbol-year of 1m at each venue's real limit",
        "",
        f"One `dagster asset materialize` of twelve closed months ({found['window']}) of BTC's perpetual, 1m,",
        "from each venue, against an emulator of its own that counts as the venues do: OKX's history-candles",
        "20 requests per 2 s, 100 bars a page, HTTP 429 code 50011 beyond; Bybit's 600 requests per 5 s,",
        "1,000 bars a page, HTTP 403 and a ten-minute ban beyond (its pages built by a first run: the bench",
        "measures the client, as with the archive's files). The share of the limit is the requests",
        "over what the limit allows in the seconds of the data path. Then the last month again."
        + (f" Measured on {found['date']} at {found['commit']}, after the rest of this run (the venues came after it)."
           if found.get("commit") else ""),
        "",
        "| venue | bars stored of the calendar's | duplicates | requests | wall | limit (requests/s) | share of the limit | 429s | peak RSS | re-run: new rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"The emulator answered {found['okx_429']} × 429 (OKX) and {found['bybit_403']} × 403 (Bybit's ban); "
        f"`marketdata report --fail-on-gaps` exited {found['report_exit']}:",
        "",
        "```",
        *found["report"],
        "```",
        "",
    ]


def export_year(found: dict | None) -> list[str]:
    if not found:
        return []
    return [
        "## Export: a year of 1m bars to CSV and Parquet",
        "",
        f"`marketdata export {BTC_1M} --from 2023-01-01 --to 2023-12-31 --format csv|parquet` of the year a",
        "Dagster run stored from the archive, each a process of its own; the file read back with polars and",
        "compared with the warehouse's rows."
        + (f" Measured on {found['date']} at {found['commit']}, after the rest of this run." if found.get("commit") else ""),
        "",
        "| format | rows | file | wall | peak RSS | equal to the warehouse |",
        "|---|---|---|---|---|---|",
        *[f"| {fmt} | {found['rows']:,} | {found[fmt]['megabytes']:.0f} MB | {found[fmt]['seconds']:.1f} s "
          f"| {found[fmt]['rss_mb']:.0f} MB | {'yes' if found[fmt]['equal'] else '**no**'} |" for fmt in ("csv", "parquet")],
        "",
    ]


def stream_latency(found: dict | None) -> list[str]:
    if not found:
        return []
    return [
        "## The live tail: 50 kline streams",
        "",
        f"`marketdata stream`'s Streamer over {found['streams']} streams of the emulator for {found['seconds']:.0f} s, its",
        "clock at 60 times real time (every stream closes a bar a second, updates every 0.25 s), a real",
        "redis-server and a subscriber: from each closing update leaving the emulator (its `E`) to the",
        "warehouse commit (DuckDB, batches every 0.5 s) and to the subscriber."
        + (f" Measured on {found['date']} at {found['commit']}, after the rest of this run." if found.get("commit") else ""),
        "",
        "| to | closing updates | median | p99 |",
        "|---|---|---|---|",
        *[f"| {label} | {found[key]['count']:,} of {found['closing_updates_sent']:,} | {found[key]['median_ms']:.0f} ms "
          f"| {found[key]['p99_ms']:.0f} ms |" for label, key in (("the warehouse commit", "to_warehouse"),
                                                                  ("the Redis subscriber", "to_redis"))],
        "",
    ]


def revisions_cost(found: dict | None) -> list[str]:
    if not found:
        return []
    return [
        "## Revisions kept: what the check costs an unchanged re-write",
        "",
        f"A year of 1m bars ({found.get('stored', found['rows']):,} rows) stored, then a month of it ({found['rows']:,} rows)"
        " upserted again",
        "unchanged, interleaved with the revision check (the stored rows whose values the incoming ones",
        "change, kept in market_data.revisions in the same transaction) and without it; the median of five",
        "each."
        + (f" Measured on {found['date']} at {found['commit']}, after the rest of this run." if found.get("commit") else ""),
        "",
        "| warehouse | with the check | without | revisions written |",
        "|---|---|---|---|",
        *[f"| {name} | {found[key]['kept'] * 1000:.0f} ms | {found[key]['not_kept'] * 1000:.0f} ms | {found[key]['revisions']} |"
          for name, key in (("DuckDB", "duckdb"), ("PostgreSQL", "postgres"))],
        "",
    ]


def databento(found: dict | None) -> list[str]:
    if not found:
        return []
    return [
        "## CME futures from Databento: fifteen years of daily bars",
        "",
        f"`marketdata backfill ohlcv_1d --from 2011-01-01 --to 2025-12-31 --local` of {found['roots']} roots from the",
        "emulator's Databento API (DBN + zstd through the vendor's client): the price asked first, then a year",
        "of three roots a request and their contract definitions; yearly partitions, the three checks each. Process",
        "start-up and Dagster bookkeeping included."
        + (f" Measured on {found['date']} at {found['commit']}, after the rest of this run (the source came after it)."
           if found.get("commit") else ""),
        "",
        "| rows | requests | wall | rows/s | peak RSS |",
        "|---|---|---|---|---|",
        f"| {found['rows']:,} | {found['requests']:,} | {found['seconds']:.1f} s | {found['rows'] / found['seconds']:,.0f} "
        f"| {found['rss_mb']:.0f} MB |",
        "",
    ]


def growth(values: list[float], sizes: list[int]) -> str:
    """How a cost grows with the universe, step by step (10 → 100 → 300): each step's factor
    against the universe's, judged on the last step, where fixed costs no longer hide the rest."""
    if len(values) < 2 or not all(values):
        return "—"
    steps = list(zip(zip(values, values[1:]), zip(sizes, sizes[1:])))
    factor = (values[-1] / values[-2]) / (sizes[-1] / sizes[-2])
    word = "linear" if 0.75 <= factor <= 1.33 else "less than linear" if factor < 0.75 else "worse than linear"
    said = ", then ".join(f"×{b / a:.1f} for ×{n / m:.0f} symbols" for (a, b), (m, n) in steps)
    return f"{word} from {sizes[-2]} to {sizes[-1]} symbols ({said})"


def scaling(found: dict) -> list[str]:
    w = found["windows"]
    universes = found["universes"]
    sizes = [u["symbols"] for u in universes]
    lines = [
        f"## The scaling curve: {', '.join(map(str, sizes))} symbols",
        "",
        f"Universes of synthetic USDT pairs listed on spot and perp: 1h klines {w['year_start']} … {w['last']}",
        f"(`marketdata backfill klines_1h --local`), then `marketdata seed` of {w['month'][:7]}: 1m klines, and",
        "funding, open interest and long/short for the perps, everything from the archive. Seven assets",
        "a symbol. A fresh environment per universe and warehouse; PostgreSQL 15 on the same machine.",
        "Recording: the seconds Dagster spent recording partitions and check results, computing the",
        "checks and drawing each asset's coverage picture, summed over the assets, as a share of the",
        "wall time. `report` and `summary` are the whole CLI processes over the seeded home; the",
        "webserver's figure is its asset catalog query (every asset with its group, partitions and",
        "checks), the median of three, after it is up.",
        "",
    ]
    rebuilt = [u["emulator_rebuilt"] for u in universes if "emulator_rebuilt" in u]
    if rebuilt:
        lines += [
            "The emulator kept every file of the largest universe built: it built "
            + ", ".join(f"{count:,}" for count in rebuilt) + " files while the runs of "
            + ", ".join(map(str, sizes)) + " symbols read them (0: no build time counted as ours).",
            "",
        ]
    for backend in ("duckdb", "postgresql"):
        rows = [u[backend] for u in universes]
        lines += [
            f"**{'DuckDB' if backend == 'duckdb' else 'PostgreSQL'}**",
            "",
            "| symbols | assets | rows | wall | rows/s | peak RSS | recording share | report | summary | asset catalog query |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {u['symbols']} | {r['webserver']['assets']:,} | {r['total_rows']:,} | {r['seconds']:.0f} s | "
                f"{r['total_rows'] / r['seconds']:,.0f} | {r['rss_mb']:.0f} MB | "
                f"{r['bookkeeping']['recording_seconds'] / r['seconds']:.0%} | {r['report_seconds']:.1f} s | "
                f"{r['summary_seconds']:.1f} s | {r['webserver']['query_seconds']:.2f} s |"
                for u, r in zip(universes, rows, strict=True)
            ],
            "",
            "How each grows with the universe:",
            "",
            f"- wall time: {growth([r['seconds'] for r in rows], sizes)}",
            f"- peak RSS: {growth([r['rss_mb'] for r in rows], sizes)}",
            f"- `marketdata report`: {growth([r['report_seconds'] for r in rows], sizes)}",
            f"- `marketdata summary`: {growth([r['summary_seconds'] for r in rows], sizes)}",
            f"- the asset catalog query: {growth([r['webserver']['query_seconds'] for r in rows], sizes)}",
            "",
        ]
        drift = rows[-1].get("drift")
        if drift:
            lines += [
                f"Within the runs of {sizes[-1]} symbols, seconds an asset over the first tenth of each dataset's "
                "assets and over the last tenth (a run slowing down as it goes would show the second larger): "
                + "; ".join(f"{name} {first:.2f} → {last:.2f} s" for name, (first, last) in sorted(drift.items())) + ".",
                "",
            ]
    return lines
