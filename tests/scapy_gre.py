"""Decodes the GRE and ERSPAN packets of a pcap with scapy, a parser the
project did not write, for tests/e2e_targets.rs: one JSON object per GRE
packet on stdout, with scapy's reading of every header field and the
encapsulated frame's bytes (hex).

Run with Debian's python3 and python3-scapy:
    /usr/bin/python3 tests/scapy_gre.py FILE.pcap
"""

import json
import sys

from scapy.all import GRE, IP, load_contrib, rdpcap, raw

load_contrib("erspan")
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III  # noqa: E402


def fields(layer, names):
    return {n: getattr(layer, n) for n in names}


def main(path):
    for pkt in rdpcap(path):
        if GRE not in pkt:
            continue
        gre = pkt[GRE]
        out = {
            "dst": pkt[IP].dst,
            "gre": fields(
                gre,
                ["chksum_present", "routing_present", "key_present",
                 "seqnum_present", "version", "proto"],
            ),
        }
        out["gre"]["key"] = gre.key if gre.key_present else None
        out["gre"]["sequence"] = gre.sequence_number if gre.seqnum_present else None
        inner = gre.payload
        if ERSPAN_II in pkt:
            e = pkt[ERSPAN_II]
            out["erspan"] = fields(
                e, ["ver", "vlan", "cos", "en", "t", "session_id", "reserved", "index"]
            )
            inner = e.payload
        elif ERSPAN_III in pkt:
            e = pkt[ERSPAN_III]
            out["erspan"] = fields(
                e,
                ["ver", "vlan", "cos", "bso", "t", "session_id", "timestamp",
                 "sgt_other", "p", "ft", "hw", "d", "gra", "o"],
            )
            inner = e.payload
        out["inner"] = raw(inner).hex()
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
