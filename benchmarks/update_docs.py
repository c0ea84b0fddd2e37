"""Copies benchmarks/results/*.md into docs/results.md (between the results markers).

    python -m benchmarks.update_docs
"""

from __future__ import annotations

import os
import re

SECTIONS = (("Query towers and sequence training (`benchmarks.sequential_tower`, `benchmarks.sequence_training`)",
             "sequential_tower.md"),
            ("", "sequence_training.md"),
            ("", "sequence_training_videogames.md"),
            ("Hard negatives at in-batch cost, and the full-softmax ceiling (`benchmarks.negative_sharing`)",
             "negative_sharing.md"),
            ("296k items: Epinions (`benchmarks.epinions`)", "epinions_leave_last_out.md"),
            ("", "epinions_time.md"),
            ("Paper tables (`benchmarks.paper_tables`)", "paper_tables.md"),
            ("Where cluster negatives help (`benchmarks.regimes`)", "regimes.md"),
            ("Larger catalogues, per-user split (`benchmarks.larger_catalogues`)", "larger_catalogues.md"),
            ("ScaNN vs brute force (`benchmarks.scann_vs_bruteforce`)", "scann.md"),
            ("Cost against catalogue size (`benchmarks.scale`)", "scale.md"),
            ("What the scale options cost in quality (`benchmarks.scale_quality`)", "scale_quality.md"),
            ("Two workers against one process (`benchmarks.multi_worker`)", "multi_worker.md"),
            ("Continuous training: warm-started windows against retraining (`benchmarks.windows`)", "windows.md"),
            ("", "windows_epinions.md"),
            ("Feedback loop: the model's recommendations become its training data (`benchmarks.feedback_loop`)",
             "feedback_loop.md"),
            ("", "feedback_loop_20k.md"))
START, END = "<!-- results:start -->", "<!-- results:end -->"
DOC = os.path.join("docs", "results.md")


def main() -> None:
    parts = []
    for title, name in SECTIONS:
        path = os.path.join("benchmarks", "results", name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts.append((f"## {title}\n\n" if title else "") + f"{f.read().strip()}\n")
    with open(DOC, encoding="utf-8") as f:
        readme = f.read()
    block = f"{START}\n" + "\n".join(parts) + f"{END}"
    if START in readme:
        readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
    else:
        readme = readme.replace("RESULTS_PLACEHOLDER", block)
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(readme)


if __name__ == "__main__":
    main()
