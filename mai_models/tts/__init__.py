"""Speech plane: data, text frontend, acoustic model, vocoder, synthesis, export."""
