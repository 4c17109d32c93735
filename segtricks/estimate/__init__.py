"""What a grid will cost before it starts: time, peak memory and disk, per cell and in total.

Modules: ``measure`` (the measuring primitives, each workload's measurement, and the store that keeps
them per machine, device and workload), ``cost`` (the model below, pricing each cell), ``cache_plan``
(which evaluation writes which cache rows: exact bytes, torch-free, for the free-space check before a
grid) and ``report`` (the printed table).

``ablate --grid G --dry-run --estimate`` measures on the device the grid would run on, with
random-init backbones of the same architectures (the same arithmetic as pretrained weights):
- a few training steps of each distinct (architecture, training tricks, image size, batch);
- a few evaluation batches of each distinct (architecture, size, batch): backbone, head, each
  post-processing trick at the prediction size, and resizing plus metrics at the datasets' typical
  original size;
- the data loader's images/s in one process (decode and augment), at the datasets' typical size;
- the tracking store: creating it (when it does not exist yet) and logging one run.
Then it extrapolates with the model below; the printed assumptions say which figures are measured.

Time of a cell = its training (when it trains) + its evaluations + logging its run:
- training = epochs left × (steps per epoch × step time + validation) ; steps per epoch =
  ⌈training images / batch⌉, capped by ``optim.steps_per_epoch``;
- evaluation of a dataset = images × (prediction + post-processing + metrics), protocols counted
  separately. The first cell of a training predicts; the others read its cached masks. The first
  training on a backbone runs the backbone; later ones read its cached keys and run only the head;
- a distillation cell's training adds its teacher's export when it is not on disk: training images ×
  the teacher's prediction and post-processing of one image at the images' typical size;
- a loader slower than the step (workers × loader images/s < batch / step time) bounds the step.
Peak memory of a cell = the larger of its training step's and its evaluation batch's (CUDA:
``max_memory_allocated``; CPU: the process's resident-set peak, reset before each measurement).
Disk: checkpoints (saved for real once per architecture and measured), the prediction and key
caches (rows × float16 bytes: exact), MLflow artifacts (per-image records and fixed figures: a model).
Dataset sizes come from the data when it is present, else from the registry's published sizes.
"""
