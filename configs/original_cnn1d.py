# Results table row 1: CNN1D, lr 0.001, no augmentation, no weight decay, 30 epochs -> 33% (900 s).
include("original_recipe.py")
model = "cnn1d"
lr = 0.001
epochs = 30
