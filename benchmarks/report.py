"""The printed table, the JSON file and the PNG chart of one benchmark run."""

from __future__ import annotations

import json
import os


def table(results: list[dict]) -> str:
    head = (f"{'scenario':<11} {'server':<26} {'req/s':>9} {'MB/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'CPU µs/req':>10} {'ratio':>6} {'target':>7}")
    rows = [head, "-" * len(head)]
    for result in results:
        for label, server in result["servers"].items():
            m = server["median"]
            is_subject = label == result["subject"]
            ratio = f"{result['ratio']:.2f}" if is_subject else ("ref" if label == result["reference"] else "")
            target = (f">={result['target']:.2f}" + (" ok" if result["met"] else " NO")) if is_subject else ""
            rows.append(f"{result['scenario']:<11} {label:<26} {m['rps']:>9,.0f} {m['bytes_per_s'] / 1e6:>8,.1f} "
                        f"{m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f} {m['cpu_us_per_request']:>10.1f} {ratio:>6} "
                        f"{target:>7}")
            if m["errors"]:
                rows.append(f"{'':<11} {'':<26} !! {m['errors']:.0f} errors per round: the numbers are not valid")
        rows.append("")
    rows.append("ratio: the gateway's median over the best reference's median; requests/s, or bytes/s for 1 MiB.")
    return "\n".join(rows)


def write_json(path: str, document: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def write_chart(path: str, results: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["scenario"] for r in results]
    xs = range(len(results))
    subject = [r["servers"][r["subject"]]["median"][r["metric"]] for r in results]
    reference = [r["servers"][r["reference"]]["median"][r["metric"]] for r in results]
    # Left: absolute throughput in the unit each target uses, normalised per scenario to the reference.
    width = 0.38
    left.bar([x - width / 2 for x in xs], [1.0] * len(results), width, label="reference (nginx / plain loop)",
             color="#999999")
    left.bar([x + width / 2 for x in xs], [s / r for s, r in zip(subject, reference)], width, label="gateway",
             color="#1f77b4")
    def absolute(r, value):
        return f"{value / 1e6:,.0f} MB/s" if r["metric"] == "bytes_per_s" else f"{value:,.0f}/s"

    for x, r, s, ref in zip(xs, results, subject, reference):
        left.annotate(absolute(r, s), (x + width / 2, s / ref), ha="center", va="bottom", fontsize=7)
        left.annotate(absolute(r, ref), (x - width / 2, 1.0), ha="center", va="bottom", fontsize=7, color="#555555")
        left.hlines(r["target"], x - 0.45, x + 0.45, colors="#d62728", linestyles="dashed")
    left.set_ylim(0, 1.35 * max([1.0] + [s / ref for s, ref in zip(subject, reference)]))
    left.set_xticks(list(xs), names)
    left.set_ylabel("throughput relative to the reference")
    left.set_title("gateway vs reference (dashed: target)")
    left.legend(fontsize=8, loc="upper right")
    # Right: server CPU per request, the cost that sets the ceiling on one core.
    cpu_subject = [r["servers"][r["subject"]]["median"]["cpu_us_per_request"] for r in results]
    cpu_reference = [r["servers"][r["reference"]]["median"]["cpu_us_per_request"] for r in results]
    right.bar([x - width / 2 for x in xs], cpu_reference, width, label="reference", color="#999999")
    right.bar([x + width / 2 for x in xs], cpu_subject, width, label="gateway", color="#1f77b4")
    right.set_xticks(list(xs), names)
    right.set_yscale("log")
    right.set_ylabel("server CPU µs per request (log)")
    right.set_title("CPU per request on the server core")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(document: dict) -> str:
    """The run as a Markdown table, for docs/performance.md."""
    rows = ["| scenario | server | req/s | MB/s | p50 ms | p99 ms | server CPU µs/req | ratio |",
            "|---|---|---|---|---|---|---|---|"]
    for result in document["results"]:
        for label, server in result["servers"].items():
            m = server["median"]
            if label == result["subject"]:
                ratio = f"**{result['ratio']:.2f}** (target {result['target']:.2f}: {'met' if result['met'] else 'missed'})"
            else:
                ratio = "reference" if label == result["reference"] else ""
            rows.append(f"| {result['scenario']} | {label} | {m['rps']:,.0f} | {m['bytes_per_s'] / 1e6:,.1f} | "
                        f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us_per_request']:.1f} | {ratio} |")
    load = document.get("load_average", {})
    rows.append("")
    rows.append(f"Run of {document['started']}, {document['elapsed_s']:.0f} s; load average {load.get('before', 0):.1f} "
                f"before, {load.get('after', 0):.1f} after.")
    return "\n".join(rows)
