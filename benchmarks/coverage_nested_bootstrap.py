"""Coverage and false-positive rate of the study's nested 95% interval on simulated studies.

    python benchmarks/coverage_nested_bootstrap.py [--replicates 60] [--n-boot 150]

Each simulated study has a known true AUC difference (cxraug.experiment.simulate): one design with
an effect (delta 0.3 on the binormal separation) and one without. Prints the share of studies whose
interval covered the truth and the share with p < 0.05 (the false-positive rate when there is no
effect). The figures in docs/commands/experiment.md come from the defaults.
"""

from __future__ import annotations

import argparse
import time

from cxraug.experiment.simulate import Design, coverage


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicates", type=int, default=60)
    parser.add_argument("--n-boot", type=int, default=150)
    args = parser.parse_args()
    for name, design, seed in (
        ("no effect", Design(delta=0.0, seeds=4), 0),
        ("effect", Design(delta=0.3, seeds=4), 100),
    ):
        t0 = time.perf_counter()
        result = coverage(design, args.replicates, n_boot=args.n_boot, seed=seed)
        print(
            f"{name:9s} K={design.generators} S={design.seeds} N={design.cases}: true diff "
            f"{result['truth']:+.4f}, coverage {result['coverage']:.1%}, p<0.05 in "
            f"{result['rejection_rate']:.1%} of {args.replicates} studies ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
