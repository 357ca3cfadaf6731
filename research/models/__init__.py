"""Model assemblies over the shared transformer Block: encoder (BERT) and decoder (GPT)."""
