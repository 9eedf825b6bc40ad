# Results table row 2: CNN1D, lr 0.0001, augmentation, weight decay 1e-4, 50 epochs -> 47% (1200 s).
include("original_recipe.py")
model = "cnn1d"
lr = 0.0001
data_augmentation = True
weight_decay = 0.0001
epochs = 50
