# The original's training procedure (docs/faithfulness.md: Training, as the original ran it), for the rows of its results table that include
# this file. Every key below changes the numbers; docs/faithfulness.md's table of differences says
# what this project does by default instead, and why.
split = "random"              # a random stratified 80/20 split; its held-out part is both val and test
train_size = 0.8
shuffle = False               # one fixed training order (train_test_split's) for every epoch
epoch_loss = "per_batch"      # epoch losses, and the scheduler's input, as the mean of batch losses
augment_masks = "fixed"       # augmentation: one masked copy per clip, drawn once, after the clean clips
mask_draw = "original"        # its mask widths (0..31 bands, 0..193 frames) and start positions
report_epoch = "last"         # the final epoch's test figures are reported, not a best checkpoint's
faithful = True               # its forward pass (raw dB input, CNN1D's ReLU on logits, CRNN's reshape)
init = "kaiming"
batch_size = 50
wandb_project = "MusicGenreClassificationDefinitive"
amp = False                   # float32 throughout, as it trained (amp=auto would use bf16 autocast on CUDA)
