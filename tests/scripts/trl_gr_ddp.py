"""Launched by tests/test_trl_integration.py under `accelerate launch --num_processes 2` (CPU, gloo): one
GRPO + GR update through TRL; each process saves the micro-batch it trained on, process 0 the gradient TRL
steps with (safetensors, in OUT)."""

from __future__ import annotations

import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from overopt.config import GRConfig
from overopt.integrations.trl import GradientRegularizationMixin, proxy_reward

KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")


class Recorded(GradientRegularizationMixin, GRPOTrainer):
    def _prepare_inputs(self, generation_batch):
        prepared = super()._prepare_inputs(generation_batch)
        if self.model.training:
            self.batch = prepared
        return prepared


def main(policy_dir: str, rm_dir: str, out: str, prompts: list[str]) -> None:
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).double()
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval()
    args = GRPOConfig(
        output_dir=f"{out}/trl", use_cpu=True, bf16=False, report_to=[], save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=1, learning_rate=1e-3,
        temperature=1.0, top_k=0, top_p=1.0, seed=0, beta=0.0, scale_rewards="none", loss_type="dr_grpo",
        max_grad_norm=0.0, shuffle_dataset=False, ddp_backend="gloo",
    )  # fmt: skip
    trainer = Recorded(
        model=policy,
        reward_funcs=[proxy_reward(rm, tok)],
        args=args,
        processing_class=tok,
        train_dataset=Dataset.from_dict({"prompt": prompts * 8}),
        gr=GRConfig(gamma=1.0, eps=0.1),
    )
    rank = trainer.accelerator.process_index

    class BeforeStep(TrainerCallback):
        def on_pre_optimizer_step(self, a, state, control, **kw):
            if rank == 0:
                model = trainer.accelerator.unwrap_model(trainer.model)
                grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters()}
                save_file(grads, f"{out}/grads.safetensors")

    trainer.add_callback(BeforeStep())
    trainer.train()
    save_file({k: trainer.batch[k].contiguous() for k in KEYS}, f"{out}/batch{rank}.safetensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
