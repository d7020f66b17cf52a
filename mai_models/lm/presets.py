"""Named model presets (``tiny`` for tests up to the documented many-node ``mai-1-like`` layout), each a
model config, a parallel layout, the world size it is meant for and a default batch shape."""

from __future__ import annotations

from pydantic import Field, model_validator

from mai_models.lm.model_config import MoEModelConfig, ParallelConfig, _Strict


class TrainingHint(_Strict):
    """Default batch shape for a preset (the trainer may override)."""

    micro_batch_size: int = Field(ge=1)
    global_batch_size: int = Field(ge=1)
    seq_length: int = Field(ge=1)


class Preset(_Strict):
    model: MoEModelConfig
    parallel: ParallelConfig
    train: TrainingHint
    world_size: int = Field(1, ge=1, description="GPUs/processes the layout is meant for")
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Preset:
        if self.train.seq_length > self.model.seq_length:
            raise ValueError(f"train.seq_length {self.train.seq_length} > model.seq_length")
        dp = self.parallel.dp(self.world_size) or 1
        if self.train.global_batch_size % (self.train.micro_batch_size * dp):
            raise ValueError(
                f"global_batch_size {self.train.global_batch_size} is not divisible by micro batch x DP "
                f"= {self.train.micro_batch_size} x {dp}"
            )
        return self

    def with_vocab(self, vocab_size: int) -> Preset:
        """The same preset for a tokenizer with ``vocab_size`` tokens."""
        return self.model_copy(update={"model": self.model.with_vocab(vocab_size)})

    def validate_layout(self) -> None:
        self.parallel.validate(self.world_size, self.model)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        description="unit tests: < 1M parameters, well under a second per step on CPU",
        model=MoEModelConfig(
            num_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_query_groups=2,
            ffn_hidden_size=128,
            vocab_size=1000,
            seq_length=64,
            num_experts=4,
            moe_router_topk=2,
            moe_ffn_hidden_size=64,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=4, global_batch_size=8, seq_length=64),
    ),
    "demo": Preset(
        # Sized for the demo's ~2 CPU minutes: the 20M-parameter d256 shape saw 0.65 epochs of the
        # demo corpus in that time and stayed near unigram loss (2.28 test bits per byte); this one
        # runs ~2.4x the tokens per second and reaches ~1.96 at lr 2e-3 (issue 12's recipe search).
        # One routed expert plus an always-on shared one of the same width activates as many
        # parameters as top-2 and reached 1.918 against top-2's 1.959 (the dense twin is the same: 2.004).
        # A 2048-token vocabulary with one tied table: at d128 an 8192-row output layer was about half
        # of each token's compute, so the same minutes train twice the steps, and the 3-gram, rebuilt on
        # these tokens, sees fewer bytes of context (1.832). params.yaml's 900 WSD steps: 1.807, dense 1.855.
        description="~4.0M parameters (vocab 2048, tied): a few CPU minutes of real MoE training",
        model=MoEModelConfig(
            num_layers=4,
            hidden_size=128,
            num_attention_heads=4,
            num_query_groups=2,
            ffn_hidden_size=512,
            vocab_size=2048,
            seq_length=256,
            num_experts=8,
            moe_router_topk=1,
            moe_router_pre_softmax=True,
            moe_ffn_hidden_size=256,
            moe_shared_expert_intermediate_size=256,
            tie_embeddings=True,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=8, global_batch_size=32, seq_length=256),
    ),
    "small-gpu": Preset(
        description="~0.9B total / ~0.2B active (vocab 32768): one H100, bf16",
        model=MoEModelConfig(
            num_layers=16,
            hidden_size=1024,
            num_attention_heads=16,
            num_query_groups=4,
            ffn_hidden_size=4096,
            vocab_size=32768,
            seq_length=2048,
            num_experts=16,
            moe_router_topk=2,
            moe_ffn_hidden_size=1024,
            moe_grouped_gemm=True,
        ),
        parallel=ParallelConfig(),
        train=TrainingHint(micro_batch_size=8, global_batch_size=256, seq_length=2048),
    ),
    "mai-1-like": Preset(
        description=(
            "documented many-node layout, never run here: ~0.5T-parameter MoE (64 experts, top-2, "
            "~20B active) on 15,360 H100s = 1,920 nodes x 8; TP=8 inside a node, PP=8, EP=8, DP=240"
        ),
        model=MoEModelConfig(
            num_layers=48,
            hidden_size=6144,
            num_attention_heads=48,
            num_query_groups=8,
            ffn_hidden_size=24576,
            vocab_size=131072,
            seq_length=4096,
            num_experts=64,
            moe_router_topk=2,
            moe_ffn_hidden_size=8704,
            moe_aux_loss_coeff=1e-3,
            moe_z_loss_coeff=1e-3,
            moe_grouped_gemm=True,
            rotary_base=500000,
            init_method_std=0.008,
        ),
        parallel=ParallelConfig(
            tensor_model_parallel_size=8, pipeline_model_parallel_size=8, expert_model_parallel_size=8
        ),
        world_size=15360,
        train=TrainingHint(micro_batch_size=1, global_batch_size=3840, seq_length=4096),
    ),
}
