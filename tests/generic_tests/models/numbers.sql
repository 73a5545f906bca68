select * from (
    values
        (1, 5, 2, 3, 'a'),
        (2, 10, 3, 3, 'a'),
        (3, null, 1, 3, 'b')
) as numbers (number_id, amount, parts, whole, kind)
