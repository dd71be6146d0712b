"""genwire postprocess service: detokenize, stop sequences, filters, results."""
