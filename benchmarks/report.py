"""Where a backbone stands against the paper: published base and self-evolved numbers beside ours.

    python -m benchmarks report                         # every backbone with baselines or results
    python -m benchmarks report --backbone bagel        # one backbone
    python -m benchmarks report --results DIR --out DIR # other result / output folders

Reads the published numbers from ``benchmarks/baselines/published-baselines.json`` (a verbatim copy of
the paper's tables with their provenance: the single source of every published number) and how they map
onto our backbones from ``benchmarks/baselines/comparability.json``. Reads our numbers from the saved
results of the ``understanding``, ``text`` (lm-eval's MMMU), ``geneval`` and ``geneval_mini`` suites (the
newest result per suite, backbone and stage; ``stage`` is ``base`` without ``--run`` and ``evolved``
with it), plus the ``shapes`` and ``kernels`` suites. Nothing is measured here.

Writes ``report.md`` (all backbones) and, per backbone, ``report-<name>.md`` and a plot
``report-<name>.png`` to ``--out`` (default ``benchmarks/results``). Each row gives published base,
published self-evolved, the published delta, ours base, ours evolved, our delta, and flags:

- ``harness``: our harness differs from the published one, or the published one is not confirmed;
- ``judge``: an LLM-judged metric (MMBench, MM-Vet) whose judge differs from the published one;
- ``prompts``: GenEval with another prompt set than the published one;
- ``subset``: ours ran on part of the benchmark (``--limit``), so it is not comparable at all;
- ``tolerance``: our base is further from the published base than the tolerance (about 1 point).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks._results import write_result

ROOT = Path(__file__).resolve().parent
BASELINES = ROOT / "baselines"
RESULTS = ROOT / "results"
GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall")
MEASURED_SUITES = ("understanding", "text", "geneval", "geneval_mini")


# -- inputs ------------------------------------------------------------------------------------------
def load_baselines(folder: Path = BASELINES) -> dict[str, Any]:
    """``{"published": <published-baselines.json>, "comparability": <comparability.json>}``, checked:
    every backbone of comparability.json names a baseline that published-baselines.json has."""
    published = json.loads((folder / "published-baselines.json").read_text())
    comp = json.loads((folder / "comparability.json").read_text())
    known = set(published["understanding"]["results"]) | set(published["generation_geneval"]["results"])
    for name, spec in comp["backbones"].items():
        if spec["baseline"] not in known:
            raise ValueError(f"{folder / 'comparability.json'}: backbone {name!r} maps to baseline "
                             f"{spec['baseline']!r}, which published-baselines.json does not have ({sorted(known)})")
    return {"published": published, "comparability": comp}


def suite_of(path: Path, data: dict[str, Any]) -> str:
    """The suite that wrote a result: ``_meta.suite``, else (older results) the file name's first word."""
    meta = data.get("_meta") or {}
    if meta.get("suite"):
        return str(meta["suite"])
    if isinstance(data.get("suite"), str):
        return data["suite"]
    return path.stem.split("-")[0]


def scan_results(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every saved result in ``folder`` as ``{"path", "suite", "data"}``; files that are not JSON results
    are skipped with a warning naming them (a report never fails on one bad file)."""
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"report: skipping {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict) or path.stem.startswith("report"):
            continue
        found.append({"path": path, "suite": suite_of(path, data), "data": data})
    return found


def newest(results: list[dict[str, Any]], suite: str, backbone: str, stage: str) -> dict[str, Any] | None:
    """The newest result (by ``_meta.started``, then file name) of ``suite`` for ``backbone`` at ``stage``."""
    hits = []
    for r in results:
        spec = (r["data"].get("_meta") or {}).get("backbone") or {}
        if r["suite"] == suite and spec.get("name") == backbone and spec.get("stage") == stage and "metrics" in r["data"]:
            hits.append(r)
    hits.sort(key=lambda r: (str(r["data"]["_meta"].get("started") or ""), r["path"].name))
    return hits[-1] if hits else None


# -- one backbone ------------------------------------------------------------------------------------
def _ours(results: list[dict[str, Any]], backbone: str, suites: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per stage, ``{"metrics": {...}, "meta": ..., "source": {metric: file}}`` merged over ``suites`` in
    order (an earlier suite's value wins: lmms-eval's MMMU before lm-eval's)."""
    out: dict[str, dict[str, Any]] = {}
    for stage in ("base", "evolved"):
        merged: dict[str, Any] = {"metrics": {}, "meta": {}, "source": {}}
        for suite in suites:
            r = newest(results, suite, backbone, stage)
            if r is None:
                continue
            for k, v in r["data"]["metrics"].items():
                if k not in merged["metrics"] and isinstance(v, (int, float)):
                    merged["metrics"][k] = float(v)
                    merged["meta"][k] = r["data"]["_meta"]
                    merged["source"][k] = r["path"].name
        out[stage] = merged
    return out


def _tolerance(comp: dict[str, Any], metric: str, published: float) -> float:
    tol = comp["tolerance"]
    rel = tol.get("relative", {}).get(metric)
    return abs(published) * rel if rel is not None else float(tol["points"])


def _flags(kind: str, metric: str, meta: dict[str, Any] | None, spec: dict[str, Any], comp: dict[str, Any],
           pub_base: float | None, ours_base: float | None) -> list[str]:
    if meta is None:
        return []
    flags = []
    limit = meta.get("limit")
    if limit:
        flags.append(f"subset (limit={limit})")
    if kind == "understanding":
        pub = spec.get("understanding_harness") or {}
        harness = str(meta.get("harness") or "")
        if not harness.startswith(pub.get("name", "\0")):
            flags.append(f"harness: ours {harness}, published {pub.get('name', '?')}")
        elif not pub.get("confirmed", False):
            flags.append("harness: published one not confirmed")
        if metric in comp.get("judge_dependent", []):
            flags.append(f"judge: ours {meta.get('judge') or 'none'}")
    else:
        pub = spec.get("geneval") or {}
        ours = str(meta.get("prompt_set") or "")
        if not ours.startswith(pub.get("prompt_set", "\0")):
            flags.append(f"prompts: ours {ours or '?'}, published {pub.get('prompt_set', '?')}")
    if pub_base is not None and ours_base is not None and not limit and \
            abs(ours_base - pub_base) > _tolerance(comp, metric, pub_base):
        flags.append(f"tolerance: base off by {ours_base - pub_base:+.1f}")
    return flags


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.1f}" if sign else f"{v:.1f}"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def backbone_rows(name: str, baselines: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{"understanding": [row...], "geneval": [row...]}``; a row has metric, published base/evolved,
    ours base/evolved, both deltas, flags and the result files ours came from."""
    published, comp = baselines["published"], baselines["comparability"]
    spec = comp["backbones"].get(name, {})
    key = spec.get("baseline")
    tables: dict[str, list[dict[str, Any]]] = {}
    for kind, section, metrics, suites in (
        ("understanding", published["understanding"], published["understanding"]["metrics"], ("understanding", "text")),
        ("geneval", published["generation_geneval"], list(GENEVAL_TASKS), ("geneval",)),
    ):
        pub = section["results"].get(key, {}) if key else {}
        ours = _ours(results, name, suites)
        rows = []
        for metric in metrics:
            pb, pe = (pub.get(metric) or {}).get("base"), (pub.get(metric) or {}).get("self_evolved")
            ob, oe = ours["base"]["metrics"].get(metric), ours["evolved"]["metrics"].get(metric)
            flags = _flags(kind, metric, ours["base"]["meta"].get(metric), spec, comp, pb, ob)
            flags += [f"{f} (evolved)" for f in _flags(kind, metric, ours["evolved"]["meta"].get(metric), spec, comp, None, None)
                      if f not in flags]
            rows.append({
                "metric": metric, "published_base": pb, "published_evolved": pe, "published_delta": _delta(pb, pe),
                "ours_base": ob, "ours_evolved": oe, "ours_delta": _delta(ob, oe),
                "flags": flags,
                "sources": sorted({s for s in (ours["base"]["source"].get(metric), ours["evolved"]["source"].get(metric)) if s}),
            })
        if any(r["published_base"] is not None or r["ours_base"] is not None or r["ours_evolved"] is not None for r in rows):
            tables[kind] = rows
    mini = _ours(results, name, ("geneval_mini",))
    if mini["base"]["metrics"] or mini["evolved"]["metrics"]:
        keys = [k for k in mini["base"]["metrics"] if k != "overall"] + ["overall"]
        keys += [k for k in mini["evolved"]["metrics"] if k not in keys]
        tables["geneval_mini"] = [{
            "metric": k, "published_base": None, "published_evolved": None, "published_delta": None,
            "ours_base": mini["base"]["metrics"].get(k), "ours_evolved": mini["evolved"]["metrics"].get(k),
            "ours_delta": _delta(mini["base"]["metrics"].get(k), mini["evolved"]["metrics"].get(k)),
            "flags": [f"subset (limit={m['limit']})"] if (m := mini["base"]["meta"].get(k) or {}).get("limit") else [],
            "sources": sorted({s for s in (mini["base"]["source"].get(k), mini["evolved"]["source"].get(k)) if s}),
        } for k in keys]
    return tables


TITLES = {"understanding": "Understanding", "geneval": "GenEval (percent)",
          "geneval_mini": "GenEval-mini on ShapesWorld (percent; no published counterpart)"}


def render_table(rows: list[dict[str, Any]], published: bool = True) -> str:
    """Markdown: one row per metric; without ``published`` (GenEval-mini) the published columns are left out."""
    head = ["metric", *(["published base", "published evolved", "published Δ"] if published else []),
            "ours base", "ours evolved", "ours Δ", "flags"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in rows:
        cells = [r["metric"]]
        if published:
            cells += [_fmt(r["published_base"]), _fmt(r["published_evolved"]), _fmt(r["published_delta"], True)]
        cells += [_fmt(r["ours_base"]), _fmt(r["ours_evolved"]), _fmt(r["ours_delta"], True), "; ".join(r["flags"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_backbone(name: str, tables: dict[str, list[dict[str, Any]]], baselines: dict[str, Any], plot: str | None) -> str:
    comp = baselines["comparability"]["backbones"].get(name, {})
    ckpt = baselines["published"].get("checkpoints", {}).get(comp.get("baseline", ""), {})
    parts = [f"## {name}" + (f" (published as `{comp['baseline']}`, {ckpt.get('hub_id', '')})" if comp else " (no published baseline)")]
    if comp:
        parts.append(f"Published understanding harness: {comp['understanding_harness']['name']} "
                     f"({comp['understanding_harness']['note']}). GenEval: {comp['geneval']['note']}.")
    for kind in ("understanding", "geneval", "geneval_mini"):
        if kind in tables:
            parts += [f"### {TITLES[kind]}", render_table(tables[kind], published=kind != "geneval_mini")]
            sources = sorted({s for r in tables[kind] for s in r["sources"]})
            missing = [s for s in ("ours_base", "ours_evolved") if all(r[s] is None for r in tables[kind])]
            parts.append(("Ours from " + ", ".join(f"`{s}`" for s in sources) + "." if sources else "Ours: not run yet.")
                         + (f" Not run: {', '.join(m.replace('ours_', '') for m in missing)}." if sources and missing else ""))
    if plot:
        parts.append(f"![{name}: published and ours]({plot})")
    return "\n\n".join(parts)


def plot_backbone(name: str, tables: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Grouped bars per metric: published base / evolved, ours base / evolved (MME on its own axis)."""
    panels = []
    if "understanding" in tables:
        pct = [r for r in tables["understanding"] if not r["metric"].startswith("MME")]
        mme = [r for r in tables["understanding"] if r["metric"].startswith("MME")]
        panels += [("understanding (%)", pct), ("MME (raw score)", mme)]
    for kind, title in (("geneval", "GenEval (%)"), ("geneval_mini", "GenEval-mini (%)")):
        if kind in tables:
            panels.append((title, tables[kind]))
    panels = [(t, rows) for t, rows in panels if rows]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("published_base", "published base", "#a0aec0"), ("published_evolved", "published evolved", "#4a5568"),
              ("ours_base", "ours base", "#90cdf4"), ("ours_evolved", "ours evolved", "#2b6cb0")]
    widths = [max(2.0, 0.9 * len(rows)) for _, rows in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.5, 3.8), constrained_layout=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels):
        for i, (key, label, color) in enumerate(series):
            xs = [j + (i - 1.5) * 0.2 for j in range(len(rows))]
            ys = [r[key] if r[key] is not None else math.nan for r in rows]  # NaN: no bar
            ax.bar(xs, ys, width=0.2, color=color, label=label)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["metric"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{name}: published vs ours (missing bars: not run)", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the other suites' headlines ---------------------------------------------------------------------
def shapes_summary(results: list[dict[str, Any]]) -> str | None:
    """One line per saved ShapesWorld suite result: the ``full`` recipe's gains (mean ± std over seeds)."""
    lines = []
    for r in results:
        if r["suite"] != "shapes" or "full" not in r["data"]:
            continue
        full, meta = r["data"]["full"], r["data"].get("_meta", {})
        cells = []
        for metric in ("vqa_accuracy", "geneval_mini"):
            if metric in full:
                gains = [e - b for b, e in zip(full[metric]["base"], full[metric]["evolved"])]
                sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
                cells.append(f"{metric} {statistics.fmean(gains):+.1f} ± {sd:.1f}")
        lines.append(f"| `{r['path'].name}` | {meta.get('split', 'test')} | {len(full['vqa_accuracy']['base'])} | {', '.join(cells)} |")
    if not lines:
        return None
    return "\n".join(["| result | split | seeds | gain of `full` (mean ± std) |", "|---|---|---:|---|", *lines])


def kernels_summary(results: list[dict[str, Any]]) -> str | None:
    """Per saved kernel result: the geometric mean over shapes of each alternative's time relative to asg's."""
    lines = []
    for r in results:
        if r["suite"] != "kernels":
            continue
        rows = [x for x in r["data"].get("results", []) if "time_ms" in x]
        by_key: dict[tuple[str, str], list[float]] = {}
        asg = {(x["op"], x["tokens"], x["vocab"]): x["time_ms"] for x in rows if x["impl"] == "asg"}
        for x in rows:
            ref = asg.get((x["op"], x["tokens"], x["vocab"]))
            if x["impl"] != "asg" and ref:
                by_key.setdefault((x["op"], x["impl"]), []).append(x["time_ms"] / ref)
        machine = r["data"].get("machine", {})
        where = machine.get("gpu") or machine.get("cpu") or "?"
        for (op, impl), ratios in sorted(by_key.items()):
            gm = math.exp(statistics.fmean(math.log(v) for v in ratios))
            lines.append(f"| `{r['path'].name}` | {where} | {op} | {impl} | {gm:.2f}x |")
    if not lines:
        return None
    return "\n".join(["| result | machine | op | alternative | its time / asg's (geometric mean) |",
                      "|---|---|---|---|---:|", *lines])


# -- the suite ---------------------------------------------------------------------------------------
def build_report(baselines: dict[str, Any], results: list[dict[str, Any]], backbones: list[str] | None,
                 out: Path) -> dict[str, Any]:
    names = list(baselines["comparability"]["backbones"])
    for r in results:
        spec = (r["data"].get("_meta") or {}).get("backbone") or {}
        if r["suite"] in MEASURED_SUITES and spec.get("name") and spec["name"] not in names:
            names.append(spec["name"])
    if backbones:
        unknown = [b for b in backbones if b not in names]
        if unknown:
            raise SystemExit(f"report: no baselines or results for {', '.join(unknown)} (have: {', '.join(names)})")
        names = list(backbones)
    report: dict[str, Any] = {"backbones": {}}
    sections = ["# Published vs ours", "Published numbers: `benchmarks/baselines/published-baselines.json` "
                "(the paper's tables; see its provenance caveats). Flags are explained in `benchmarks/report.py`."]
    for name in names:
        tables = backbone_rows(name, baselines, results)
        png = out / f"report-{name}.png"
        plotted = plot_backbone(name, tables, png)
        text = render_backbone(name, tables, baselines, png.name if plotted else None)
        write_result(out / f"report-{name}.json", {"backbone": name, "tables": tables}, f"# {name}: published vs ours\n\n{text}")
        report["backbones"][name] = tables
        sections.append(text)
    for title, text in (("ShapesWorld self-evolution (`shapes` suite)", shapes_summary(results)),
                        ("Kernels (`kernels` suite)", kernels_summary(results))):
        if text:
            sections += [f"## {title}", text]
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    baselines = load_baselines(Path(args.baselines))
    out = Path(args.out or args.results)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(baselines, scan_results(Path(args.results)), args.backbone, out)
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'} and report-<backbone>.{{md,png,json}} for {', '.join(report['backbones'])}")
    return report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", nargs="+", help="backbones to report (default: all with baselines or results)")
    p.add_argument("--results", default=str(RESULTS), help="folder of saved results (default benchmarks/results)")
    p.add_argument("--baselines", default=str(BASELINES), help="folder of the published baselines")
    p.add_argument("--out", help="where report.md and report-<backbone>.* go (default: the results folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
