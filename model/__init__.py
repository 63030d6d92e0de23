"""The digit classifier: its network (digit_cnn) and the preprocessing every caller shares."""
