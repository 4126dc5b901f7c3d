"""crisp.pruning: the CRISP algorithm on ``nn.Module``s — saliency, the iterative schedule, STE and learned masks, fine-tuning."""
