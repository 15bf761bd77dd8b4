"""TRL 1.16's GRPO/RLOO config fields that posttrain accepts but does not implement (vLLM, continuous
batching, completion logging, entropy control, ...). Each is kept so a TRL script or YAML loads unchanged: at
its default it changes nothing (the defaults describe what posttrain does), any other value is refused with a
clear error (``config.refuse_unimplemented``) instead of being silently ignored."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import unimplemented


@dataclass
class TRLGenerationFields:
    """The fields GRPOConfig and RLOOConfig share."""

    cache_implementation: str | None = unimplemented(None,
        "Implementation of the cache method for faster generation when use_vllm is set to False.")
    chat_template_kwargs: dict | str | None = unimplemented(None,
        "Additional keyword arguments to pass to the apply_chat_template function when generating "
        "completions.")
    ds3_gather_for_generation: bool = unimplemented(True, "This setting applies to DeepSpeed ZeRO-3.")
    log_completions: bool = unimplemented(False,
        "Whether to log a sample of (prompt, completion) pairs every logging_steps steps.")
    log_multimodal: bool = unimplemented(True,
        "Whether to log multimodal content (images, videos, etc.) together with completions.")
    log_unique_prompts: bool = unimplemented(False, "Whether to log unique prompts.")
    mask_truncated_completions: bool = unimplemented(False,
        "When enabled, truncated completions are excluded from the loss calculation, preventing them from "
        "being incorrectly penalized and introducing noise during training.")
    num_completions_to_print: int | None = unimplemented(None, "Number of completions to print with rich.")
    num_generations_eval: int | None = unimplemented(None, "Number of generations to sample during evaluation.")
    pad_to_multiple_of: int | str | None = unimplemented('auto',
        "If set, the prompts ids and completions ids will be padded to a multiple of this value.")
    ref_model_mixup_alpha: float = unimplemented(0.6,
        "α parameter from the TR-DPO paper, which controls the mix between the current policy and the "
        "previous reference policy during updates.")
    ref_model_sync_steps: int = unimplemented(512,
        "τ parameter from the TR-DPO paper, which determines how frequently the current policy is "
        "synchronized with the reference policy.")
    repetition_penalty: float = unimplemented(1.0,
        "Float that penalizes new tokens based on whether they appear in the prompt and the generated text so "
        "far.")
    router_aux_loss_coef: float | None = unimplemented(None,
        "Coefficient of the load-balancing auxiliary loss for Mixture-of-Experts (MoE) models, added to the "
        "training loss with this weight.")
    shuffle_dataset: bool | None = unimplemented(True, "Whether to shuffle the training dataset.")
    sync_ref_model: bool = unimplemented(False,
        "Whether to synchronize the reference model with the active model every ref_model_sync_steps steps, "
        "using the ref_model_mixup_alpha parameter.")
    transformers_continuous_batching_config: dict | str | None = unimplemented(None,
        "Keyword arguments for transformers.generation.ContinuousBatchingConfig.")
    use_transformers_continuous_batching: bool = unimplemented(False,
        "Whether to use transformers' continuous batching engine for generating completions.")
    use_transformers_paged: bool = unimplemented(False, "Deprecated.")
    use_vllm: bool = unimplemented(False, "Whether to use vLLM for generating completions.")
    vllm_enable_sleep_mode: bool = unimplemented(False,
        "Enable vLLM sleep mode to offload weights/cache during the optimizer step.")
    vllm_gpu_memory_utilization: float = unimplemented(0.3, "Control the GPU memory utilization for vLLM.")
    vllm_group_port: int = unimplemented(51216, "Port number for the weight update group.")
    vllm_max_model_length: int | None = unimplemented(None, "Context window for vLLM.")
    vllm_mode: str = unimplemented('colocate',
        "Mode to use for vLLM integration when use_vllm is set to True.")
    vllm_model_impl: str = unimplemented('vllm', "Model implementation to use for vLLM.")
    vllm_server_base_url: str | None = unimplemented(None,
        "Base URL for the vLLM server (e.g., 'http://localhost:8000').")
    vllm_server_host: str = unimplemented('0.0.0.0', "Host of the vLLM server to connect to.")
    vllm_server_port: int = unimplemented(8000, "Port of the vLLM server to connect to.")
    vllm_server_timeout: float = unimplemented(240.0,
        "Total timeout duration in seconds to wait for the vLLM server to be up.")
    vllm_structured_outputs_regex: str | None = unimplemented(None, "Regex for vLLM structured outputs.")
    vllm_tensor_parallel_size: int = unimplemented(1, "Control the tensor parallel size for vLLM.")


@dataclass
class TRLGRPOFields(TRLGenerationFields):
    """GRPO-only fields (loss variants and importance-sampling corrections posttrain does not have)."""

    cast_lm_head_to_fp32: bool = unimplemented(False,
        "Whether to cast the language modeling head of the policy and reference models to float32.")
    delta: float | None = unimplemented(None,
        "Enables the upper clipping bound in two-sided GRPO loss when set to a float.")
    entropy_coef: float = unimplemented(0.0, "Coefficient of the entropy regularization term in the loss.")
    entropy_coef_delta: float = unimplemented(0.005,
        "Step size for adjusting the entropy coefficient during adaptive entropy control.")
    entropy_coef_max: float = unimplemented(1.0,
        "Upper bound for the entropy coefficient when using adaptive entropy control.")
    entropy_coef_min: float = unimplemented(0.0,
        "Lower bound for the entropy coefficient when using adaptive entropy control.")
    entropy_target: float = unimplemented(0.2,
        "Target mean per-token entropy (nats) for adaptive entropy control.")
    importance_sampling_level: str = unimplemented('token',
        "Controls whether importance sampling ratios are computed at the 'token' or 'sequence' level.")
    log_completions_hub_repo: str | None = unimplemented(None,
        "Hugging Face Hub repository to save the completions.")
    max_tool_calling_iterations: int | None = unimplemented(None,
        "Maximum number of tool-calling turns when training an agent.")
    multi_objective_aggregation: str = unimplemented('sum_then_normalize',
        "Method to aggregate multiple reward functions.")
    off_policy_mask_threshold: float | None = unimplemented(None, "Threshold for off-policy sequence masking.")
    sapo_temperature_neg: float = unimplemented(1.05,
        "Temperature for tokens with non-positive advantage scores used in the sapo loss function.")
    sapo_temperature_pos: float = unimplemented(1.0,
        "Temperature for tokens with positive advantage scores used in the sapo loss function.")
    top_entropy_quantile: float = unimplemented(1.0, "ρ parameter from Beyond the 80/20 Rule.")
    use_adaptive_entropy: bool = unimplemented(False,
        "Whether to use adaptive entropy control, introduced in Skywork-OR1 "
        "(https://huggingface.co/papers/2505.22312).")
    vespo_k_neg: float = unimplemented(3.0,
        "k parameter for negative advantages, it is the power exponent in the VESPO loss.")
    vespo_k_pos: float = unimplemented(2.0,
        "k parameter for positive advantages, it is the power exponent in the VESPO loss.")
    vespo_lambda_neg: float = unimplemented(2.0,
        "lambda parameter for negative advantages, it is the exponential decay factor in the VESPO loss.")
    vespo_lambda_pos: float = unimplemented(3.0,
        "lambda parameter for positive advantages, it is the decay factor in the VESPO loss.")
    vllm_importance_sampling_cap: float | None = unimplemented(None,
        "Deprecated, use vllm_importance_sampling_clip_max instead.")
    vllm_importance_sampling_clip_max: float | None = unimplemented(3.0,
        "Importance sampling upper bound C_max used by vllm_importance_sampling_mode.")
    vllm_importance_sampling_clip_min: float | None = unimplemented(None,
        "Importance sampling lower bound C_min used by vllm_importance_sampling_mode.")
    vllm_importance_sampling_correction: bool = unimplemented(True,
        "Whether to apply Importance Sampling (IS) to correct for the mismatch between vLLM completion "
        "logprobs and recomputed training logprobs.")
    vllm_importance_sampling_mode: str = unimplemented('sequence_mask',
        "Specifies how Importance Sampling (IS) is performed when vllm_importance_sampling_correction=True.")


@dataclass
class TRLRLOOFields(TRLGenerationFields):
    """RLOO-only fields."""

    reward_clip_range: list[float] | None = unimplemented(None, "Clip range for rewards as (min, max).")
