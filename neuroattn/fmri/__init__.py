"""fMRI tokenization and foundation models: TABLeT, SLIM-Brain, BrainMAE and a 4-D window baseline."""
