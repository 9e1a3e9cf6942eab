"""Run under a throw-away virtualenv with a real bittensor SDK (9.12.x or 10.x): query our axon
with the SDK's own Dendrite and print what it read back as one JSON line.

    python bt_dendrite_query.py --port P --axon-hotkey SS58 --uri //Alice --image img.jpg [--route ImageSynapse]

Nothing leaves the machine: the external-IP lookup is patched before the Dendrite is built.
"""

import argparse
import asyncio
import base64
import json
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--axon-hotkey", required=True)
    ap.add_argument("--uri", default="//Alice")
    ap.add_argument("--image", required=True)
    ap.add_argument("--route", default="ImageSynapse")
    ap.add_argument("--timeout", type=float, default=9.0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import bittensor.utils.networking as networking

    networking.get_external_ip = lambda: "127.0.0.1"
    import bittensor as bt
    import pydantic
    from bittensor_wallet import Keypair

    Synapse = getattr(bt, "Synapse", None) or bt.synapse
    Dendrite = getattr(bt, "Dendrite", None) or bt.dendrite
    AxonInfo = getattr(bt, "AxonInfo", None)
    if AxonInfo is None:
        from bittensor.core.chain_data import AxonInfo

    class ImageSynapse(Synapse):  # natix/protocol.py, without torch
        testnet_label: int = -1
        image: str = pydantic.Field(title="Image", description="A base64 encoded image", default="", frozen=False)
        prediction: float = pydantic.Field(title="Prediction", description="Probability", default=-1.0, frozen=False)

        def deserialize(self) -> float:
            return self.prediction

    class ExtendedImageSynapse(ImageSynapse):
        model_url: str = ""

    cls = {"ImageSynapse": ImageSynapse, "ExtendedImageSynapse": ExtendedImageSynapse}[args.route]
    keypair = Keypair.create_from_uri(args.uri)
    dendrite = Dendrite(wallet=keypair)
    axon = AxonInfo(version=1, ip="127.0.0.1", port=args.port, ip_type=4, hotkey=args.axon_hotkey, coldkey=args.axon_hotkey)
    with open(args.image, "rb") as f:
        b64 = base64.b64encode(f.read()).decode()

    async def run():
        out = []
        for _ in range(args.repeat):
            responses = await dendrite.forward(axons=[axon], synapse=cls(image=b64), timeout=args.timeout, deserialize=False)
            r = responses[0]
            out.append({
                "prediction": r.prediction,
                "status_code": r.dendrite.status_code,
                "status_message": r.dendrite.status_message,
                "axon_status_code": r.axon.status_code,
                "axon_process_time": r.axon.process_time,
                "process_time": r.dendrite.process_time,
                "is_success": r.is_success,
                "deserialized": r.deserialize(),
            })
        await dendrite.aclose_session()
        return out

    results = asyncio.run(run())
    print(json.dumps({"bittensor": bt.__version__, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
