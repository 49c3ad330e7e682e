"""A Hugging Face text classifier (BERT built from a config: nothing is downloaded), pruned by
InCoP-IF on synthetic token sequences. Needs ``pip install "incop[hf]"``.

    python examples/hf_text_classifier.py [OUT]   (OUT: default runs/example-bert)
"""

import sys

import torch
import transformers

import incop

VOCAB, LENGTH = 60, 16


def build() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, num_labels=3,
                                     max_position_embeddings=LENGTH)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def sequences(n: int, seed: int) -> list[tuple[dict, torch.Tensor]]:
    """Token sequences whose class is which third of the vocabulary most of them come from."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    x[:, ::2] = y[:, None] * (VOCAB // 3) + torch.randint(0, VOCAB // 3, (n, LENGTH // 2),
                                                           generator=g)  # fmt: skip
    batches = zip(x.split(32), y.split(32), strict=True)
    return [({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, t) for ids, t in batches]


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/example-bert"
    torch.manual_seed(0)
    # Dict inputs become keyword arguments; the output's .logits is what the loss reads.
    result = incop.prune(build(), sequences(512, 0), sequences(128, 1), method="incop-if",
                         levels=2, warmup_epochs=3, max_epochs=3, probe_size=256, out=out,
                         model_factory="hf_text_classifier:build")  # fmt: skip
    print(result.table())
    model, masks = incop.load_ticket(out)
    attention = [name for name in masks if ".attention." in name]
    print(f"{len(attention)} attention weights pruned, e.g. {attention[0]}")
