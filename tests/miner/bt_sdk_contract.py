"""Run inside a venv with a real bittensor SDK: check miner/chain.py's SDK_CONTRACT and
SDK_FIELDS against it, and that our way of building a Subtensor config ignores sys.argv.

    python bt_sdk_contract.py /path/to/miner/chain.py   -> prints one JSON object
"""

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import re
import sys


def literal(path, name):
    tree = ast.parse(open(path).read())
    for node in tree.body:
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def resolve(dotted):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def main():
    chain_py = sys.argv[1]
    problems = []
    import bittensor

    for dotted, (keywords, returns) in literal(chain_py, "SDK_CONTRACT").items():
        try:
            obj = resolve(dotted)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{dotted}: missing ({exc})")
            continue
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            sig = None  # Rust-built classes (Wallet) may have no signature: check by calling below
        if sig is not None:
            params = sig.parameters
            has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
            for kw in keywords:
                if kw not in params and not has_kwargs:
                    problems.append(f"{dotted}: no parameter {kw!r} (has {list(params)})")
            if returns is not None:
                ann = sig.return_annotation
                text = ann if isinstance(ann, str) else ann.__name__ if isinstance(ann, type) else str(ann)
                text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text).replace("'", "").replace('"', "")
                text = re.sub(r"ForwardRef\((\w+)\)", r"\1", text)
                if text != returns:
                    problems.append(f"{dotted}: returns {text!r}, we expect {returns!r}")
    for dotted, fields in literal(chain_py, "SDK_FIELDS").items():
        cls = resolve(dotted)
        if dotted.endswith("Metagraph"):
            obj = cls(netuid=1, network="finney", lite=True, sync=False)  # offline
            names = {f for f in fields if hasattr(obj, f)}
        else:
            names = {f.name for f in dataclasses.fields(cls)}
        for f in fields:
            if f not in names:
                problems.append(f"{dotted}: no field {f!r}")
    # Wallet takes name/hotkey/path as keywords (it is a Rust class without a signature).
    w = bittensor.Wallet(name="contract", hotkey="check", path="/nonexistent-wallets")
    if (w.name, w.hotkey_str) != ("contract", "check"):
        problems.append(f"Wallet(name=, hotkey=, path=) gave {(w.name, w.hotkey_str)}")
    # Our Subtensor config must not read argv: with the SDK's default it would load miner.toml as YAML.
    sys.argv = ["streetcascade", "serve", "--config", "/nonexistent/miner.toml", "--subtensor.network", "argv-net"]
    parser = argparse.ArgumentParser(add_help=False)
    bittensor.Subtensor.add_args(parser)
    config = bittensor.Config(parser, args=["--no_version_checking"])
    if config.get("config") or config.subtensor.network == "argv-net":
        problems.append(f"Config(args=[...]) still read sys.argv: config={config.get('config')} network={config.subtensor.network}")
    try:
        bittensor.Subtensor.config()
        problems.append("the SDK's default config no longer reads argv: our workaround may be unneeded")
    except Exception:
        pass  # expected: it tries to load /nonexistent/miner.toml
    print(json.dumps({"bittensor": bittensor.__version__, "problems": problems}))


main()
