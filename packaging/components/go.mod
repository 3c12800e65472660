module stigmer.local/components

go 1.19
