"""Update rules: each turns verified groups (or a fixed dataset) into a training batch and a loss."""
