"""Pure array math: log-probs, masks, rewards → losses and advantages. Never imports models."""
