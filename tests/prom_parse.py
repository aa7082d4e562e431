"""Parses the Prometheus text format on stdin with the Prometheus project's
own Python client (its parser, a reader the project did not write), for
tests/e2e_metrics.rs: one JSON array on stdout, a family per element with
its name (the parser's: a counter's without `_total`), type, help and
samples (name, labels, value). A line the parser refuses exits non-zero.

Run with Debian's python3 and python3-prometheus-client:
    /usr/bin/python3 tests/prom_parse.py < metrics.txt
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    families = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        families.append(
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value}
                    for s in family.samples
                ],
            }
        )
    json.dump(families, sys.stdout)


if __name__ == "__main__":
    main()
