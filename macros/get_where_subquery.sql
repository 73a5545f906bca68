{#
    dbt's documented hook for the `where` config of tests, extended with one
    placeholder: `__latest_refresh__` becomes the relation's own latest
    `_refreshed_at`. Tests on large incremental tables use it to check the rows
    the last run wrote (older rows were checked when they were written):

        config:
          where: "_refreshed_at = __latest_refresh__"
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where') -%}
    {%- if where -%}
        {%- set where = where | replace(
            '__latest_refresh__',
            '(select max(latest._refreshed_at) from ' ~ relation ~ ' as latest)'
        ) -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') as dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
