"""Re-create the embedded models/efficientnet-lite0-int8.onnx (+ .json) from efficientnet-lite0.onnx.

Needs the onnx package: pip install 'tvclean[quantize]'. Run: python models/quantize_efficientnet_lite0.py
Calibration uses only images that ship with tvclean (see tvcore.io.quantize.calibration_images),
so with the versions recorded in the JSON ("quantized_with") the file is byte-for-byte the same.
"""

from pathlib import Path

from tvcore.io.quantize import quantize


def main() -> None:
    result = quantize("efficientnet-lite0", out=Path(__file__).resolve().parent)
    print(f"{result.path}\nsha256 {result.sha256}")
    for kind, cosine in result.agreement.items():
        print(f"cosine to fp32 features, {kind}: mean {cosine['mean']:.4f}, min {cosine['min']:.4f}")


if __name__ == "__main__":
    main()
