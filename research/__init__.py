"""Why is BERT not GPT? One set of Flax modules, one trainer, many pretraining objectives."""
