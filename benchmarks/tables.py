"""Print the Markdown tables of ``docs/benchmarks.md`` and ``docs/trust.md`` from the JSON in ``benchmarks/results``.

The docs' tables are pasted from this script's output, so every number in them traces back to a results file
and to the command stored in it::

    python benchmarks/tables.py             # every accuracy_*.json, training_choices_*.json and trust_*.json
    python benchmarks/tables.py benchmarks/results/accuracy_squidpy_hmhvg200_log2.json

After the accuracy tables comes one summary over every accuracy file given: HyperST's PCC@50 over the best
baseline's, the mean PCC of HyperST and its ablations, and the folds HyperST wins against that baseline;
then the same for ``hyperst_blend`` and ``hyperst_retrieval`` beside HyperST, and ``hyperst_retrieval`` fold by fold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ["pcc_mean", "pcc_at_10", "pcc_at_50", "pcc_at_200", "mse", "mae"]
HEAD = ["mean PCC", "PCC@10", "PCC@50", "PCC@200", "MSE", "MAE"]


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f}" if stat.get("std") is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def accuracy(result: dict) -> str:
    """One Markdown table: methods x metrics, mean ± std over folds, best of each column in bold."""
    s = result["settings"]
    commands = "; ".join(f"`{c}`" for c in result.get("commands", [result["command"]]))  # several with --add
    lines = [
        f"{commands} — encoder `{s['encoder']}` (weights {s['weights']}), genes `{s['genes']}`, "
        f"target `{s['target']}`, held out {', '.join(s['folds'])}; mean ± std over folds:",
        "",
        "| method | " + " | ".join(HEAD) + " | s/fold |",
        "|---|" + "---|" * (len(HEAD) + 1),
    ]
    summary = result["summary"]
    best = {}
    for m in METRICS:
        vals = {k: v[m]["mean"] for k, v in summary.items()}
        best[m] = (min if m in ("mse", "mae") else max)(vals, key=vals.get)
    for method, row in summary.items():
        cells = [f"**{_cell(row[m])}**" if best[m] == method else _cell(row[m]) for m in METRICS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['seconds_per_fold']:.0f} |")
    return "\n".join(lines)


def _wins(diffs: list[float]) -> str:
    """``"4/6"``: folds with a positive difference; ``"1/6 (5 tied)"`` when some folds give the same number."""
    ties = sum(abs(x) < 5e-4 for x in diffs)  # equal at the 3 decimals shown
    wins = sum(x >= 5e-4 for x in diffs)
    return f"{wins}/{len(diffs)}" + (f" ({ties} tied)" if ties else "")


def paired(result: dict, reference: str = "hyperst") -> str:
    """Per-fold differences ``reference − method`` of mean PCC and PCC@50, and how many folds ``reference`` wins."""
    folds = result["folds"]
    lines = [
        f"Paired over the {len(folds)} folds (`{reference}` minus each method, same held-out section; "
        "wins = folds where it is higher):",
        "",
        "| method | Δ mean PCC | wins | Δ PCC@50 | wins |",
        "|---|---|---|---|---|",
    ]
    for method in result["summary"]:
        if method == reference:
            continue
        cells = []
        both = [f for f in folds if reference in f["methods"] and method in f["methods"]]
        for m in ("pcc_mean", "pcc_at_50"):
            d = [f["methods"][reference][m] - f["methods"][method][m] for f in both]
            cells += [f"{sum(d) / len(d):+.3f}", _wins(d)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BASELINES = ("ridge", "mlp", "bleep")
ABLATIONS = ("hyperst", "no_entailment", "no_alignment")


def _best_baseline(summary: dict) -> str | None:
    """The baseline with the highest mean PCC@50 in ``summary`` (``None`` without one)."""
    baselines = [b for b in BASELINES if b in summary]
    return max(baselines, key=lambda b: summary[b]["pcc_at_50"]["mean"]) if baselines else None


def ratios(results: dict[str, dict]) -> str:
    """One row per accuracy file: HyperST's PCC@50 / the best baseline's, mean PCCs, paired wins."""
    lines = [
        "| file | features (weights) | genes | target | folds | best baseline | PCC@50 ratio | mean PCC hyperst / "
        "no_entailment / no_alignment | hyperst wins (PCC@50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        summary, s = result["summary"], result["settings"]
        best = _best_baseline(summary)
        if "hyperst" not in summary or best is None:
            continue
        ratio = summary["hyperst"]["pcc_at_50"]["mean"] / summary[best]["pcc_at_50"]["mean"]
        means = " / ".join(f"{summary[m]['pcc_mean']['mean']:.3f}" if m in summary else "–" for m in ABLATIONS)
        both = [f for f in result["folds"] if "hyperst" in f["methods"] and best in f["methods"]]
        d = [f["methods"]["hyperst"]["pcc_at_50"] - f["methods"][best]["pcc_at_50"] for f in both]
        weights = Path(str(s["weights"])).name if s["weights"] is not None else "random"
        weights = "weight-free" if s["encoder"] == "squidpy" else weights
        lines.append(
            f"| {name} | {s['encoder']} ({weights}) | {s['genes']} | {s['target']} | {len(both)} | "
            f"{best} | {ratio:.3f} | {means} | {_wins(d)} |"
        )
    return "\n".join(lines)


def _mixed(results: dict[str, dict], method: str, share: str) -> str:
    """One row per accuracy file with ``method``: its PCC@50 ratio beside HyperST's, paired differences, ``share``."""
    lines = [
        f"| file | best baseline | PCC@50 ratio hyperst → {method} | mean PCC hyperst → {method} | "
        f"Δ PCC@50 {method.removeprefix('hyperst_')} − hyperst (wins) | Δ PCC@50 {method.removeprefix('hyperst_')} "
        "− best baseline (wins) | decoder share per fold |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        summary = result["summary"]
        best = _best_baseline(summary)
        if not {"hyperst", method} <= set(summary) or best is None:
            continue
        top = summary[best]["pcc_at_50"]["mean"]
        folds = [f for f in result["folds"] if {"hyperst", method, best} <= set(f["methods"])]
        cells = []
        for other in ("hyperst", best):
            d = [f["methods"][method]["pcc_at_50"] - f["methods"][other]["pcc_at_50"] for f in folds]
            cells.append(f"{sum(d) / len(d):+.3f} ({_wins(d)})")
        shares = ", ".join(f"{f['methods'][method].get(share, float('nan')):.2f}" for f in folds)
        lines.append(
            f"| {name} | {best} | {summary['hyperst']['pcc_at_50']['mean'] / top:.3f} → "
            f"{summary[method]['pcc_at_50']['mean'] / top:.3f} | "
            f"{summary['hyperst']['pcc_mean']['mean']:.3f} → {summary[method]['pcc_mean']['mean']:.3f} | "
            f"{cells[0]} | {cells[1]} | {shares} |"
        )
    return "\n".join(lines)


def blend(results: dict[str, dict]) -> str:
    """One row per accuracy file with ``hyperst_blend``: its PCC@50 ratio beside HyperST's, paired differences."""
    return _mixed(results, "hyperst_blend", "decoder_share")


def retrieval(results: dict[str, dict]) -> str:
    """One row per accuracy file with ``hyperst_retrieval``: as :func:`blend`, with the retrieval's decoder share."""
    return _mixed(results, "hyperst_retrieval", "retrieval_decoder_share")


def retrieval_folds(result: dict) -> str:
    """``hyperst_retrieval`` fold by fold: PCC@50 beside HyperST, the blend, the best baseline; its ``w``."""
    best = _best_baseline(result["summary"])
    cols = ["hyperst", "hyperst_blend", "hyperst_retrieval", best]
    lines = [
        "| held out | validation | "
        + " | ".join(f"PCC@50 {c}" for c in cols)
        + " | retrieval alone | w | val MSE decoder / retrieval / mix |",
        "|---|---|" + "---|" * (len(cols) + 3),
    ]
    for f in result["folds"]:
        r = f["methods"].get("hyperst_retrieval")
        if r is None:
            continue
        pcc = [f"{f['methods'][c]['pcc_at_50']:.3f}" if c in f["methods"] else "–" for c in cols]
        val = " / ".join(f"{r[k]:.3f}" for k in ("val_mse_decoder", "val_mse_retrieval", "val_mse_blend"))
        lines.append(
            f"| {f['test']} | {', '.join(f['validation'])} | " + " | ".join(pcc) + " | "
            f"{r['retrieval_only']['pcc_at_50']:.3f} | {r['retrieval_decoder_share']:.2f} | {val} |"
        )
    return "\n".join(lines)


def trust(result: dict) -> str:
    """Coverage and width of the intervals, and score-error rank correlations, per fold and summarised."""
    s = result["settings"]
    lines = [
        f"`{result['command']}` — target `{s['target']}`, {s['genes']} HMHVG genes, target coverage "
        f"{s['coverage']:.0%}:",
        "",
        "| held out | validation | coverage (plain) | width (plain) | coverage (normalised) | width (normalised) | "
        "ρ radius | ρ feature distance | ρ −mean prediction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["folds"]:
        r = f["spearman_score_error"]
        lines.append(
            f"| {f['test']} | {', '.join(f['validation'])} | {f['plain']['coverage']:.3f} | {f['plain']['width']:.2f} "
            f"| {f['normalised']['coverage']:.3f} | {f['normalised']['width']:.2f} | {r['radius']:+.2f} "
            f"| {r['feature_distance']:+.2f} | {r['neg_mean_prediction']:+.2f} |"
        )
    sm = result["summary"]
    rho = sm["spearman_score_error"]

    def ms(pair: list, digits: int = 3) -> str:
        return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"

    lines.append(
        f"| **mean ± std** | | {ms(sm['plain']['coverage'])} | {ms(sm['plain']['width'], 2)} "
        f"| {ms(sm['normalised']['coverage'])} | {ms(sm['normalised']['width'], 2)} | {ms(rho['radius'], 2)} "
        f"| {ms(rho['feature_distance'], 2)} | {ms(rho['neg_mean_prediction'], 2)} |"
    )
    return "\n".join(lines)


_DEFAULTS = "lr 1e-3, no decoder LayerNorm, refit (defaults)"


def choices(result: dict) -> str:
    """``training_choices.py`` results: mean PCC and PCC@50 per variant, and per-fold wins against the defaults."""
    s = result["settings"]
    folds = result["folds"]
    ref = folds.get(_DEFAULTS)
    n = len(next(iter(folds.values())))
    lines = [
        f"`{result['command']}` — squidpy features, genes `{s['genes']}`, target `{s['target']}`, mean over "
        f"{n} folds" + ("; Δ and wins against the defaults, fold by fold:" if ref else ":"),
        "",
        "| variant | mean PCC | PCC@50 |" + (" Δ mean PCC | wins | Δ PCC@50 | wins |" if ref else ""),
        "|---|---|---|" + ("---|---|---|---|" if ref else ""),
    ]
    for name, rows in folds.items():
        sm = result["summary"][name]
        line = f"| {name} | {sm['pcc_mean']:.3f} | {sm['pcc_at_50']:.3f} |"
        if ref:
            if name == _DEFAULTS:
                line += " | | | |"
            else:
                for m in ("pcc_mean", "pcc_at_50"):
                    d = [r[m] - r0[m] for r, r0 in zip(rows, ref, strict=True)]
                    line += f" {sum(d) / len(d):+.3f} | {_wins(d)} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    files = [Path(a) for a in sys.argv[1:]] or sorted(Path(__file__).with_name("results").glob("*.json"))
    accuracies = {}
    for path in files:
        result = json.loads(path.read_text())
        if path.name.startswith("accuracy_") and "summary" in result:
            accuracies[path.name] = result
            print(f"<!-- {path.name} -->\n{accuracy(result)}\n")
            if "hyperst" in result["summary"] and len(result["folds"]) > 1:
                print(f"{paired(result)}\n")
        elif path.name.startswith("training_choices_"):
            print(f"<!-- {path.name} -->\n{choices(result)}\n")
        elif path.name.startswith("trust_"):
            print(f"<!-- {path.name} -->\n{trust(result)}\n")
    if accuracies:
        print(f"<!-- ratios -->\n{ratios(accuracies)}\n")
        print(f"<!-- blend -->\n{blend(accuracies)}\n")
        print(f"<!-- retrieval -->\n{retrieval(accuracies)}\n")
        for name, result in accuracies.items():
            if "hyperst_retrieval" in result["summary"]:
                print(f"<!-- retrieval {name} -->\n{retrieval_folds(result)}\n")


if __name__ == "__main__":
    main()
