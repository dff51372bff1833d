"""Claims in any caption and the workspace's contrast sets: which words an image can contradict, and with what."""
