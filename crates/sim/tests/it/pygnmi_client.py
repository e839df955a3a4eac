"""Drives netsync-sim with pygnmi, a gNMI client written outside this project.

Usage: pygnmi_client.py HOST PORT USERNAME PASSWORD

Does Capabilities, Get, Set then Get, Subscribe ONCE, and Subscribe STREAM
ON_CHANGE seeing a Set made here, and prints one JSON object with what it saw;
the Rust test (pygnmi.rs) asserts on it. Exits non-zero on any error.
"""

import json
import sys

from pygnmi.client import gNMIclient

ETH = "/interfaces/interface[name=ethernet-1/1]"
TIMEOUT = 30


def main():
    host, port, username, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    out = {}
    with gNMIclient(
        target=(host, port), username=username, password=password, insecure=True, gnmi_timeout=TIMEOUT
    ) as gc:
        caps = gc.capabilities()
        out["gnmi_version"] = caps["gnmi_version"]
        out["encodings"] = caps["supported_encodings"]

        got = gc.get(path=[ETH + "/config"], encoding="json_ietf")
        out["get_config"] = got["notification"][0]["update"][0]["val"]

        response = gc.set(
            update=[(ETH + "/config", {"description": "set by pygnmi", "mtu": "9000"})],
            encoding="json_ietf",
        )
        out["set_ops"] = [r["op"] for r in response["response"]]
        got = gc.get(path=[ETH + "/config/description", ETH + "/config/mtu"], encoding="json_ietf")
        out["after_set"] = [n["update"][0]["val"] for n in got["notification"]]

        once = gc.subscribe_once(
            subscribe={"subscription": [{"path": ETH + "/config"}], "mode": "once", "encoding": "json_ietf"}
        )
        paths = []
        for message in once:
            if "update" in message:
                paths += [u["path"] for u in message["update"]["update"]]
            if message.get("sync_response"):
                break
        once.close()
        out["once_paths"] = sorted(paths)

        stream = gc.subscribe_stream(
            subscribe={
                "subscription": [{"path": ETH + "/config/description", "mode": "on_change"}],
                "mode": "stream",
                "encoding": "json_ietf",
            }
        )
        initial = stream.get_update(timeout=TIMEOUT)
        out["stream_initial"] = [u["val"] for u in initial["update"]["update"]]
        gc.set(update=[(ETH + "/config", {"description": "changed while streaming"})], encoding="json_ietf")
        change = stream.get_update(timeout=TIMEOUT)
        out["stream_change"] = [[u["path"], u["val"]] for u in change["update"]["update"]]
        stream.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
