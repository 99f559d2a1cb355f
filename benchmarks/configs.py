"""Published configurations, as config.json dicts, for benchmarks with random weights (no hub needed).

Qwen/Qwen3.5-0.8B, text_config and vision_config as released (vocab 248320, tied embeddings); the 0.8B, 2B, 4B
and 9B config.json files as published, in hub_configs/ (hub_config)."""

import json
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "hub_configs"


def hub_config(name: str, vision: bool = True, layers: int | None = None) -> dict:
    """The config of hub_configs/qwen3.5-{name}.json; `layers` keeps the first N decoder layers (same widths)."""
    d = json.loads((CONFIGS / f"qwen3.5-{name}.json").read_text())
    d.pop("_source", None)
    if not vision:
        d.pop("vision_config", None)
    if layers:
        t = d["text_config"]
        t["num_hidden_layers"], t["layer_types"] = layers, t["layer_types"][:layers]
    return d


QWEN35_0_8B = {
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "model_type": "qwen3_5",
    "image_token_id": 248056, "video_token_id": 248057,
    "vision_start_token_id": 248053, "vision_end_token_id": 248054,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_5_text", "vocab_size": 248320, "hidden_size": 1024, "intermediate_size": 3584,
        "num_hidden_layers": 24, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
        "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "rms_norm_eps": 1e-6,
        "full_attention_interval": 4, "max_position_embeddings": 262144, "tie_word_embeddings": True,
        "attn_output_gate": True, "mtp_num_hidden_layers": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                            "mrope_section": [11, 11, 10], "mrope_interleaved": True},
        "eos_token_id": 248044,
    },
}
