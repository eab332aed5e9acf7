"""Pure rendering: tensors in, arrays and bytes out. No model, no grad, no I/O."""
