"""Models nobody in incop wrote, each with a factory (``user_models:<name>``) as a user would
record it: a small ResNet, a Transformer encoder classifier, a tiny Hugging Face BERT."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self, width=8, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


class Encoder(nn.Module):
    """A token classifier on nn.TransformerEncoder, batch-first or sequence-first."""

    def __init__(self, batch_first=True, vocab=50, width=32, classes=3):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        h = self.embed(tokens if self.batch_first else tokens.T)
        h = self.encoder(h)
        return self.head(h.mean(1 if self.batch_first else 0))


def resnet():
    return ResNet()


def transformer():
    return Encoder()


def bert():
    import transformers

    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, num_labels=3,
                                     max_position_embeddings=32)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def images(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None].float()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n - 64, 32)], [(x[-64:], y[-64:])]


def tokens(n=256, length=12, vocab=50, seed=0):
    """Token sequences whose class is which third of the vocabulary dominates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randint(0, vocab, (n, length), generator=g)
    x[:, ::2] = (y[:, None] * (vocab // 3) + torch.randint(0, vocab // 3, (n, length // 2),
                                                            generator=g))  # fmt: skip
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n - 64, 32)], [(x[-64:], y[-64:])]


def as_bert_batch(batch):
    x, y = batch
    return {"input_ids": x, "attention_mask": torch.ones_like(x)}, y


def digits_net():
    """For the command line on the embedded digits (8x8 images, 10 classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def linear_only():
    """A digits classifier with one layer: no channel for TAS to search."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
