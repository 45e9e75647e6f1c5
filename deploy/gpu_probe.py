"""What a running server says about the GPU check's models: each one's ModelConfig preprocessing parameters.

Asks ModelConfig over gRPC (tritonclient) for every model named and writes, per model, the configured
``ipsbench.preprocess`` kind and ``ipsbench.preprocess.device``, and the ``ipsbench.preprocess.device_effective`` the
server decided on (None where the server does not report it), as JSON for ``gpu_summary.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

KIND = "ipsbench.preprocess"
DEVICE = "ipsbench.preprocess.device"
DEVICE_EFFECTIVE = "ipsbench.preprocess.device_effective"


def preprocessing(client: grpcclient.InferenceServerClient, model: str) -> dict:
    """The model's preprocessing as its ModelConfig states it, or the error that kept it from answering."""
    try:
        config = client.get_model_config(model, as_json=True, client_timeout=10)["config"]
    except InferenceServerException as error:
        return {"error": str(error.message())}
    parameters = {key: value.get("string_value") for key, value in config.get("parameters", {}).items()}
    return {
        "kind": parameters.get(KIND),
        "device": parameters.get(DEVICE),
        "device_effective": parameters.get(DEVICE_EFFECTIVE),
        "platform": config.get("platform") or config.get("backend"),
        "instance_kind": [group.get("kind") for group in config.get("instance_group", [])],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the server's gRPC host:port")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    with grpcclient.InferenceServerClient(args.target) as client:
        found = {model: preprocessing(client, model) for model in args.models}
    args.out.write_text(json.dumps(found, indent=1) + "\n")
    print(json.dumps(found))
    return 1 if any("error" in entry for entry in found.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
