"""Run under a throw-away venv with bittensor 9.12.2: a real bittensor `Axon` serving the same
instant fake model as `engine = "fake"` (base64 -> JPEG decode -> 224 -> mean-pixel logit ->
sigmoid), with a reference-miner-style blacklist (registered + validator permit) and stake
priority. The benchmark's baseline; prints READY <hotkey> when listening.

    python bt_axon_fake.py --port P --miner-uri //Bob --validator SS58 [--validator SS58 ...]
"""

import argparse
import base64
import io
import math
import signal
import sys
import tempfile
import time
import typing


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--miner-uri", default="//Bob")
    ap.add_argument("--validator", action="append", default=[])
    args = ap.parse_args()

    import bittensor.utils.networking as networking

    networking.get_external_ip = lambda: "127.0.0.1"
    import bittensor as bt
    import numpy as np
    import pydantic
    from bittensor_wallet import Keypair, Wallet
    from PIL import Image

    class ImageSynapse(bt.Synapse):  # natix/protocol.py, without torch
        testnet_label: int = -1
        image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)
        prediction: float = pydantic.Field(title="Prediction", description="Probability", default=-1.0, frozen=False)

        def deserialize(self) -> float:
            return self.prediction

    stakes = {hk: 5000.0 for hk in args.validator}
    kp = Keypair.create_from_uri(args.miner_uri)
    wallet = Wallet(name="bench", hotkey="bench", path=tempfile.mkdtemp())
    wallet.set_hotkey(kp, encrypt=False, overwrite=True)
    wallet.set_coldkeypub(kp, overwrite=True)

    def forward(synapse: ImageSynapse) -> ImageSynapse:
        img = Image.open(io.BytesIO(base64.b64decode(synapse.image))).convert("RGB").resize((224, 224))
        logit = (float(np.asarray(img).mean()) - 127.5) / 32.0
        synapse.prediction = 1.0 / (1.0 + math.exp(-logit))
        return synapse

    def blacklist(synapse: ImageSynapse) -> typing.Tuple[bool, str]:
        hk = synapse.dendrite.hotkey
        if hk not in stakes:
            return True, "Unrecognized hotkey"
        return False, "Hotkey recognized!"

    def priority(synapse: ImageSynapse) -> float:
        return stakes.get(synapse.dendrite.hotkey, 0.0)

    axon = bt.Axon(wallet=wallet, port=args.port, ip="127.0.0.1", external_ip="127.0.0.1", external_port=args.port)
    axon.attach(forward_fn=forward, blacklist_fn=blacklist, priority_fn=priority)
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    axon.start()
    print("READY", kp.ss58_address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    axon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
