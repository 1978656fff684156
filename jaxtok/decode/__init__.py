"""jaxtok's one inference engine: the ``Model`` handle, ``extend`` (the one place a token block
meets a KV cache), sampling, and the one decode loop with its ``Compactor`` hook.

    from jaxtok.decode import Model, generate
    model = jaxtok.models.load("smollm2-135m")
    out = generate(model, prompt_BxT, max_new_tokens=32)   # a Generation
"""
from jaxtok.decode.loop import (Compactor, DecodeState, Generation, check_compactor, check_model,
                                decode_body, decode_loop, generate, generate_on_device,
                                initial_state, start, validate_prompts)
from jaxtok.decode.model import Model, ModelDef
from jaxtok.decode.sampling import Sampling, sample, warp
from jaxtok.decode.step import block_positions, decode_step, extend, prefill

__all__ = ["Compactor", "DecodeState", "Generation", "Model", "ModelDef", "Sampling",
           "block_positions", "check_compactor", "check_model", "decode_body", "decode_loop",
           "decode_step", "extend", "generate", "generate_on_device", "initial_state", "prefill",
           "sample", "start", "validate_prompts", "warp"]
