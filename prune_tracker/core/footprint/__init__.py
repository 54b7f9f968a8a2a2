"""Memory footprint, compute and MicroNet score of a (pruned) CIFAR model.

`measure_footprint(model)` works on a CPU float32 eval copy; the caller's model is not changed. Masked
modules (torch.nn.utils.prune `weight_orig` + `weight_mask`) are measured by their effective weight, i.e.
exactly like their `prune.remove`d version. Structured pruning (smaller layers) is seen through the shapes.

Parameter storage (bytes; every state_dict tensor inference needs: weights, biases, BatchNorm weight, bias,
running_mean, running_var; not num_batches_tracked; tied tensors once), one metric per format of the
registry `formats.FORMATS` (adding a format is one entry there):
- footprint_fp32_bytes / footprint_fp16_bytes: dense, 4 / 2 bytes per element.
- footprint_csr_fp32_bytes / footprint_csr_fp16_bytes: tensors with >= 2 dims as a
  (shape[0] x numel/shape[0]) CSR matrix: nnz values (4 / 2 B) + nnz column indices + (rows + 1) row
  pointers. Column index type: smallest unsigned type holding cols - 1 (uint8 <= 256 columns,
  uint16 <= 65 536, uint32 beyond); row pointer type: smallest unsigned type holding nnz. A tensor whose
  CSR is larger than dense, and every 1-D tensor, counts dense.
- footprint_bitmask_fp16_bytes: nnz fp16 values + ceil(numel / 8) mask bytes (dense if that is smaller).
- footprint_best_bytes: per tensor the smallest of dense fp16 / CSR fp16 / bitmask fp16 (ties: dense,
  csr, bitmask). breakdown["tensors"] rows: name, shape, numel, nonzeros, bytes per format (fp32, fp16,
  csr_fp32, csr_fp16, bitmask_fp16, best), csr_*_as / bitmask_fp16_as ("dense" on fallback),
  index_dtype, rowptr_dtype, chosen (the best format).
- params_total / params_nonzero: elements / non-zero elements of model.parameters() (as count_params).
Real files (np.savez, uncompressed, exactly the arrays above with the dtypes above; kept when
write_files_to is given): file_fp32_bytes, file_fp16_bytes, file_csr_fp32_bytes, file_csr_fp16_bytes,
file_bitmask_fp16_bytes, file_best_fp16_bytes = computed bytes + container overhead (per array: 128 B npy
header + ~100 B zip entry + 2 x the array name; breakdown["files"] has payload and overhead);
file_fp16_gzip_bytes: gzip (level 9) of the fp16 file; file_torch_csr_bytes: torch.save of torch's own
sparse CSR (fp16 values, int64 indices, so heavier than ours).

Activations (bytes, at `batch_size`, default 1): activation_peak_fp32_bytes / activation_peak_fp16_bytes:
the largest total of feature maps alive at once in a real eager forward pass (TorchDispatchMode; each
new float output storage is alive until its last Python tensor dies). Counts the input image (alive for
the whole pass), tensors held across residual connections, and anything the model's Python code keeps
referenced; not parameters, views, integer side outputs (max-pool indices), or kernel scratch space. fp16
counts the same elements at 2 bytes. Unstructured zeros do not change it; removing channels does.
Per-op rows: breakdown["activations"]["rows"]. total_fp16_best_bytes = footprint_best_bytes +
activation_peak_fp16_bytes.

Speed: the measurement runs torch on one intra-op thread (restored afterwards): a batch-1 CIFAR forward
gains nothing from more, and on a shared CPU competing OpenMP threads cost seconds.

Compute (per image): flops_dense holds MULTIPLY-ACCUMULATES (MACs) of convolutions and matmuls, the
convention of Li et al. (ResNet-56 = 1.25e8): torch.utils.flop_counter.FlopCounterMode total / 2.
flops_effective: each conv / linear layer scaled by the non-zero fraction of its weight.
With a parent (its Footprint or metrics dict): flops_reduction = 1 - flops_effective / parent's,
params_reduction (params_nonzero), footprint_best_reduction, total_fp16_best_reduction (fractions removed).

MicroNet (NeurIPS 2019, CIFAR-100 track; micronet_score at 16 bits, micronet_params and micronet_ops in
32-bit units): score = params / 36.5e6 + ops / 10.49e9 (WideResNet-28-10), counted per image as
google-research micronet_challenge/counting.py does:
- Parameters: bits / 32 each, so 16-bit = 0.5 (freebie). A conv / linear weight with zeros counts
  min(dense, nnz x bits + numel x 1-bit mask). BatchNorm following a conv / linear is folded into it
  (convention): no BN parameters, the conv gains a bias (out_channels x bits) if it had none. A BN that
  cannot fold counts 2 x C (scale and shift). Other tensors dense.
- Conv / linear: per output element nnz_row multiplies and nnz_row - 1 additions (nnz_row = non-zeros of
  that output channel's weight row, so (1 - sparsity) x k x k x C_in on average), + 1 addition for the bias
  (own or from folded BN). Zero padding is not discounted.
- Folded BN: 0 ops; unfolded BN: 1 multiply + 1 add per element. ReLU (relu, hardtanh, clamp): 1 multiply
  per element; SiLU 3 mults + 1 add, sigmoid 2 mults + 1 add (counting.py). Residual / elementwise add:
  1 add per element; elementwise mul / div: 1 multiply. Average pooling (incl. global): window - 1 adds and
  1 multiply per output; max pooling: window - 1 comparisons counted as adds (counting.py has no max pool).
  Reshapes, slicing, zero padding (option-A shortcut), concatenation, casts: free. Anything else is listed
  in breakdown["micronet"]["uncounted_ops"].
- Multiplies count precision_bits / 32 (16 -> 0.5, freebie); additions always 1 (32-bit accumulators).
  ReLU zeros earn nothing (only static weight sparsity counts).
"""

from .core import Footprint, footprint_metrics, measure_footprint, micronet_score
from .formats import FORMATS, StorageFormat
from .report import footprint_figure, format_table
from .units import human_bytes, parse_bytes

__all__ = ["FORMATS", "Footprint", "StorageFormat", "footprint_figure", "footprint_metrics", "format_table",
           "human_bytes", "measure_footprint", "micronet_score", "parse_bytes"]
