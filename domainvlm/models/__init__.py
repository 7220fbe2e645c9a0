"""What the engine knows about a VLM's insides, shared by training, evaluation and the nano
model: its parts, its image features kept once per image, and randomly initialised instances
of each supported architecture."""
