"""Post-processing: the LLM client that corrects a transcript, and the judge of its reply."""
